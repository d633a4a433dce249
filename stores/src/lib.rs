//! sled stores that damage never stops. sled 0.34 can fail to open a
//! damaged store, panic inside its recovery, or open it and fail (or panic)
//! later on a read; any of these at start would crash-loop a service. So:
//!
//! - [`open`] opens guarded (a panic is damage, not a crash), reads every
//!   entry of every tree once (damage that opening did not catch shows here,
//!   not in the middle of the service's work), and on damage moves the
//!   store aside (the [`ASIDE_KEPT`] newest copies are kept), starts a fresh
//!   one, and copies into it whatever of the damaged one can still be read.
//!   A [`Recovery`] says what happened, with figures.
//! - Anything that is not damage (permissions, a full disk, a store in use)
//!   is an error with advice, and the store is left as it is: a fresh store
//!   would hide data that is still there.
//!
//! sled also keeps failing every write after one I/O error (a full disk)
//! until the store is opened again; [`free_bytes`] lets a service tell when
//! it is worth reopening.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

mod generation;
pub use generation::Generation;

/// Set-aside copies of damaged stores kept beside the store; older ones are deleted.
pub const ASIDE_KEPT: usize = 3;

/// Why a store could not be opened (it was left in place).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the store at {}: {source}{}; it was left in place", path.display(), advice(source))]
    Unusable { path: PathBuf, source: sled::Error },
    #[error("the store at {} is damaged ({damage}) and could not be moved aside: {source}", path.display())]
    SetAside { path: PathBuf, damage: String, source: std::io::Error },
}

/// What recovering a damaged store did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// What was wrong.
    pub damage: String,
    /// Where the damaged store now is (`None`: it opened, but had lost
    /// writes it had flushed, see [`Generation`]; it is used as it is).
    pub aside: Option<PathBuf>,
    /// Entries copied into the fresh store, per tree.
    pub salvaged: BTreeMap<String, u64>,
    /// Trees whose reading stopped at damage (their later entries are lost);
    /// `None`: the damaged store would not open at all, nothing could be read.
    pub cut_short: Option<Vec<String>>,
}

impl Recovery {
    pub fn salvaged_total(&self) -> u64 {
        self.salvaged.values().sum()
    }

    /// One line for the log and status.
    pub fn describe(&self) -> String {
        let read = match &self.cut_short {
            None => "it would not open: nothing could be read from it".to_string(),
            Some(cut) if cut.is_empty() && self.salvaged.is_empty() => {
                "it opened, but held nothing readable".into()
            }
            Some(cut) if cut.is_empty() => {
                format!("{} entries salvaged, every one readable", self.salvaged_total())
            }
            Some(cut) => format!(
                "{} entries salvaged; reading stopped at damage in {} (what came after is lost)",
                self.salvaged_total(),
                cut.join(", ")
            ),
        };
        match &self.aside {
            Some(aside) => format!("damaged ({}); set aside as {}; {read}", self.damage, aside.display()),
            None => format!("damaged ({}); what is left is used as it is", self.damage),
        }
    }
}

/// A store, opened.
pub struct Opened {
    pub db: sled::Db,
    /// Set when it was damaged and recovered at this open.
    pub recovery: Option<Recovery>,
    /// Entries per tree, as read through at this open (not on a reopen).
    pub counts: Option<Counts>,
}

/// Entries per tree.
pub type Counts = BTreeMap<String, u64>;

/// What to do about an open error that is not damage.
pub fn advice(e: &sled::Error) -> &'static str {
    let sled::Error::Io(io) = e else { return "" };
    match io.raw_os_error() {
        Some(libc::EACCES | libc::EPERM) => {
            " (permission denied: the data directory and everything in it must belong to the user the service runs as)"
        }
        Some(libc::EMFILE | libc::ENFILE) => " (too many open files: raise the limit, e.g. LimitNOFILE=)",
        Some(libc::ENOSPC | libc::EDQUOT) => " (the disk is full: free some space)",
        Some(libc::EROFS) => " (the file system is read-only)",
        Some(libc::EIO) => " (an I/O error: the disk or SD card may be failing)",
        _ if io.to_string().contains("could not acquire lock") => {
            " (another process has it open: is another instance running on this data directory?)"
        }
        _ => "",
    }
}

/// Whether an error from opening or reading a store means its files are
/// damaged (so setting them aside is the only way on), rather than the
/// system refusing access, running out of something, or the store being in use.
pub fn is_damage(e: &sled::Error) -> bool {
    match e {
        sled::Error::Corruption { .. } | sled::Error::ReportableBug(_) => true,
        // sled's "not a store I can read" (say, a config file that is not text).
        sled::Error::Unsupported(_) => true,
        sled::Error::Io(io) => {
            matches!(io.kind(), std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof)
        }
        sled::Error::CollectionNotFound(_) => false,
    }
}

/// Runs `f`, a panic inside sled counted as damage. sled panics on some
/// damaged files (it asserts what it reads); the panic's message goes into
/// the error instead of onto stderr as a crash report.
fn guarded<T>(what: &str, f: impl FnOnce() -> sled::Result<T>) -> sled::Result<T> {
    quiet_guarded_panics();
    let outer = GUARDED.with(|g| g.replace(true));
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(outer));
    outcome.unwrap_or_else(|_| {
        let message = PANIC_MESSAGE.with(|m| m.take()).unwrap_or_default();
        let damage = format!("sled failed {what}: {message}");
        Err(sled::Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, damage)))
    })
}

thread_local! {
    /// Whether this thread is inside [`guarded`].
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The message of the last panic [`guarded`] caught on this thread.
    static PANIC_MESSAGE: std::cell::Cell<Option<String>> = const { std::cell::Cell::new(None) };
}

/// Installs (once) a panic hook that keeps the message of a panic inside
/// [`guarded`] for its error, and passes every other panic to the hook there was.
fn quiet_guarded_panics() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if GUARDED.with(|g| g.get()) {
                let payload = info.payload();
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                // Where in sled, without the build machine's registry path.
                let at = info.location().map(|l| {
                    let file = l.file();
                    let file = file.rfind("/sled-").map_or(file, |i| &file[i + 1..]);
                    format!(" (in {file}:{})", l.line())
                });
                let at = at.unwrap_or_default();
                PANIC_MESSAGE.with(|m| m.set(Some(format!("{message}{at}"))));
            } else {
                previous(info);
            }
        }));
    });
}

/// Reads every entry of every tree of `db`: the damage opening did not catch.
fn check(db: &sled::Db) -> sled::Result<Counts> {
    guarded("reading the store", || {
        let mut counts = Counts::new();
        for name in db.tree_names() {
            let mut entries = 0;
            for entry in db.open_tree(&name)?.iter() {
                entry?;
                entries += 1;
            }
            counts.insert(String::from_utf8_lossy(&name).into_owned(), entries);
        }
        Ok(counts)
    })
}

/// Opens (creating if needed) the store in `dir` with `config` (its path is
/// set here), recovering it if it is damaged (see the crate's doc).
pub fn open(dir: &Path, config: sled::Config) -> Result<Opened, OpenError> {
    open_checked(dir, config, true)
}

/// [`open`] again, in a process that had the store open until an I/O
/// failure: recovered if it will not open, but not read through first (it
/// was read at start, and a full disk damages nothing sled cannot recover).
pub fn reopen(dir: &Path, config: sled::Config) -> Result<Opened, OpenError> {
    open_checked(dir, config, false)
}

fn open_checked(dir: &Path, config: sled::Config, read_through: bool) -> Result<Opened, OpenError> {
    let config = config.path(dir);
    let damage = match guarded("opening the store", || config.open()) {
        Ok(db) if !read_through => return Ok(Opened { db, recovery: None, counts: None }),
        Ok(db) => match check(&db) {
            Ok(counts) => return Ok(Opened { db, recovery: None, counts: Some(counts) }),
            Err(e) if is_damage(&e) => e,
            Err(e) => return Err(OpenError::Unusable { path: dir.into(), source: e }),
        },
        Err(e) if is_damage(&e) && dir.exists() => e,
        Err(e) => return Err(OpenError::Unusable { path: dir.into(), source: e }),
    };
    let damage = explain(&damage);
    let set_aside = |source| OpenError::SetAside { path: dir.into(), damage: damage.clone(), source };
    let aside = aside_path(dir).map_err(set_aside)?;
    log::error!(
        "store at {} is damaged ({damage}); moving it to {} and starting afresh",
        dir.display(),
        aside.display()
    );
    std::fs::rename(dir, &aside).map_err(set_aside)?;
    let db = guarded("opening a fresh store", || config.open())
        .map_err(|source| OpenError::Unusable { path: dir.into(), source })?;
    let (salvaged, cut_short) = salvage(&aside, &db);
    // The newest copies stay; the one just made is the newest.
    prune_asides(dir);
    if let Err(e) = db.flush() {
        return Err(OpenError::Unusable { path: dir.into(), source: e });
    }
    let recovery = Recovery { damage, aside: Some(aside), salvaged, cut_short };
    log::error!("store at {}: {}", dir.display(), recovery.describe());
    Ok(Opened { db, recovery: Some(recovery), counts: None })
}

/// What damage sled reported, in words an operator can act on (sled's own
/// can mislead: an unreadable `conf` is "a sled version earlier than 0.29").
/// A sled error as an operator reads it: an I/O failure as the system says
/// it ("No space left on device (os error 28)"), damage as what it means.
pub fn describe(e: &sled::Error) -> String {
    match e {
        sled::Error::Io(io) => {
            let text = io.to_string();
            // sled clones an I/O error into its Debug text: keep the message.
            match text.strip_prefix("Os {").and_then(|t| t.split_once("message: \"")?.1.split_once('"')) {
                Some((message, _)) => message.to_string(),
                None => text,
            }
        }
        _ => explain(e),
    }
}

fn explain(e: &sled::Error) -> String {
    match e {
        sled::Error::Unsupported(_) => format!("its conf file cannot be read; sled says: {e}"),
        sled::Error::Corruption { .. } => "sled found a damaged entry in its log".into(),
        sled::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => io.to_string(),
        _ => e.to_string(),
    }
}

/// Copies what can be read of the damaged store at `from` into `to`: per
/// tree, the entries up to the first it cannot read. A store that will not
/// open only because its `conf` is damaged is opened with a fresh one (the
/// damaged file is kept beside it as `conf.damaged`).
fn salvage(from: &Path, to: &sled::Db) -> (BTreeMap<String, u64>, Option<Vec<String>>) {
    let mut salvaged = BTreeMap::new();
    // Opened where it lies (sled may repair what it can as it opens).
    let open = || guarded("opening a damaged store to salvage it", || sled::Config::new().path(from).open());
    let old = match open() {
        Ok(old) => old,
        Err(_) if fresh_conf(from).is_ok() => match open() {
            Ok(old) => old,
            Err(_) => return (salvaged, None),
        },
        Err(_) => return (salvaged, None),
    };
    let mut cut_short = Vec::new();
    for name in old.tree_names() {
        let label = String::from_utf8_lossy(&name).into_owned();
        let mut copied = 0;
        let read = guarded("salvaging a tree", || {
            let (tree, into) = (old.open_tree(&name)?, to.open_tree(&name)?);
            for entry in tree.iter() {
                let (key, value) = entry?;
                into.insert(key, value)?;
                copied += 1;
            }
            Ok(())
        });
        if read.is_err() {
            cut_short.push(label.clone());
        }
        if copied > 0 {
            salvaged.insert(label, copied);
        }
    }
    (salvaged, Some(cut_short))
}

/// Gives the store at `dir` the `conf` sled writes for a new store (made in
/// a scratch directory beside it; every store here uses sled's segment size
/// and no compression), keeping the old one as `conf.damaged`.
fn fresh_conf(dir: &Path) -> std::io::Result<()> {
    let scratch = dir.with_extension("conf-scratch");
    let made = guarded("making a fresh conf", || {
        let db = sled::Config::new().path(&scratch).open()?;
        db.flush()?;
        Ok(())
    });
    let conf = std::fs::read(scratch.join("conf"));
    let _ = std::fs::remove_dir_all(&scratch);
    made.map_err(std::io::Error::other)?;
    let conf = conf?;
    let (old, damaged) = (dir.join("conf"), dir.join("conf.damaged"));
    if old.exists() {
        std::fs::rename(&old, damaged)?;
    }
    std::fs::write(old, conf)
}

/// `<store>.damaged-<n>-<unix seconds>`, n one more than any there: numbered
/// so the oldest is known even when the clock was wrong (a Pi with no RTC).
fn aside_path(dir: &Path) -> std::io::Result<PathBuf> {
    let n = asides(dir)?.last().map_or(1, |(n, _)| n + 1);
    let mut name = dir.as_os_str().to_owned();
    name.push(format!(".damaged-{n}-{}", jiff::Timestamp::now().as_second()));
    Ok(PathBuf::from(name))
}

/// The set-aside copies of `dir`, oldest first.
pub fn asides(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let (Some(parent), Some(base)) = (dir.parent(), dir.file_name()) else { return Ok(Vec::new()) };
    let prefix = format!("{}.damaged-", base.to_string_lossy());
    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(parent)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&prefix) else { continue };
        if let Some(n) = rest.split('-').next().and_then(|n| n.parse::<u64>().ok()) {
            found.push((n, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Deletes all but the [`ASIDE_KEPT`] newest set-aside copies of `dir`.
fn prune_asides(dir: &Path) {
    let found = match asides(dir) {
        Ok(found) => found,
        Err(e) => return log::warn!("cannot list the set-aside stores beside {}: {e}", dir.display()),
    };
    for (_, old) in found.iter().rev().skip(ASIDE_KEPT) {
        log::warn!("deleting the oldest set-aside store {}", old.display());
        if let Err(e) = std::fs::remove_dir_all(old) {
            log::warn!("cannot delete {}: {e}", old.display());
        }
    }
}

/// Bytes free to unprivileged users on the file system holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    space(path).map(|(free, _)| free)
}

/// (bytes free to unprivileged users, bytes in all) on the file system holding `path`.
pub fn space(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: statvfs writes into the struct we own; the path is NUL-terminated.
    let stat = unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(path.as_ptr(), &mut stat) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        stat
    };
    let unit = stat.f_frsize as u64;
    Ok((stat.f_bavail as u64 * unit, stat.f_blocks as u64 * unit))
}

/// Whether the file system holding `path` has room enough to open a store
/// again after a failure: `wanted` bytes free, or a tenth of a smaller file system.
pub fn has_room(path: &Path, wanted: u64) -> bool {
    space(path).is_ok_and(|(free, total)| free >= wanted.min(total / 10).max(1))
}

/// Free space a store wants before it is opened again after a failure (or
/// a tenth of a smaller file system: see [`has_room`]).
pub const ROOM_TO_REOPEN: u64 = 16 << 20;

/// Runs until `sleep` says to stop (it sleeps the time given and returns
/// true then): while `broken` says the store `name` in `dir` failed, opens
/// it again with `reopen` once its file system has room, backing off (up to
/// 8 s) while that fails. sled fails every write after one I/O error until
/// the store is opened again, so this is how a full disk heals.
pub fn heal<E: std::fmt::Display>(
    name: &str,
    dir: &Path,
    mut sleep: impl FnMut(std::time::Duration) -> bool,
    broken: impl Fn() -> bool,
    mut reopen: impl FnMut() -> Result<(), E>,
) {
    use std::time::Duration;
    let mut wait = Duration::from_secs(1);
    while !sleep(wait) {
        if !broken() {
            wait = Duration::from_secs(1);
            continue;
        }
        if !has_room(dir, ROOM_TO_REOPEN) {
            continue;
        }
        match reopen() {
            Ok(()) => {
                let room = free_bytes(dir).unwrap_or(0);
                log::info!("{name} store opened again after a storage failure ({room} bytes free)");
                wait = Duration::from_secs(1);
            }
            Err(e) => {
                log::error!("{name} store: opening it again failed: {e}");
                wait = (wait * 2).min(Duration::from_secs(8));
            }
        }
    }
}

#[cfg(test)]
mod tests;
