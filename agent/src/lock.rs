//! One agent per data directory: `<data_dir>/agent.lock`, held with flock(2)
//! for as long as the agent runs and holding its pid, taken before anything
//! in the directory is touched. The kernel drops the lock when the process
//! ends, however it ends, so a crash never leaves a stale lock behind; the
//! file itself stays (deleting it would race with the next agent taking it).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another agent is running on data directory {} ({}); stop it first, or give this one another --data-dir",
        dir.display(),
        pid.map_or("pid unknown".to_string(), |p| format!("pid {p}"))
    )]
    Held { dir: PathBuf, pid: Option<u32> },
    #[error("cannot lock {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

/// The held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

pub const LOCK_FILE: &str = "agent.lock";

/// Takes the data directory's lock, or says which process holds it.
pub fn lock(data_dir: &Path) -> Result<DataDirLock, LockError> {
    let path = data_dir.join(LOCK_FILE);
    let io = |source| LockError::Io { path: path.clone(), source };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io(e));
        }
        let mut text = String::new();
        let _ = file.read_to_string(&mut text);
        return Err(LockError::Held { dir: data_dir.into(), pid: text.trim().parse().ok() });
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(DataDirLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap().trim(),
            std::process::id().to_string()
        );
        // flock locks belong to the open file, so a second open in this process is refused too.
        match lock(dir.path()) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected the lock to be held, got {other:?}"),
        }
        drop(held);
        lock(dir.path()).expect("free again once dropped");
    }
}
