//! Files that hold secrets (CURVE secret keys, HTTP tokens) are read only
//! when their owner alone may read them: a key that others can read is a
//! key others may hold. The error names the `chmod` that fixes the file, and
//! a binary exits 78 (EX_CONFIG) on it wherever it surfaces.
//!
//! One exception: systemd's `$CREDENTIALS_DIRECTORY`. systemd makes it
//! private to the unit (a read-only mount, the unit's user alone may enter
//! it) and grants that user read access to each file with an ACL; the ACL's
//! mask shows in the group bits, so a credential reads as 0440 there. In that
//! directory group bits are accepted; others' are not.

use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A secret file that group or others may access.
#[derive(Debug, thiserror::Error)]
#[error(
    "{path} holds a secret but is open to {who} (mode {mode:04o}): run `chmod 600 {path}`, and replace \
     the secret if anyone else may have read it"
)]
pub struct Exposed {
    pub path: PathBuf,
    pub mode: u32,
    who: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    // Not transparent: [`Exposed`] stays in the error's source chain, where
    // the binaries look for it to exit 78.
    #[error("{0}")]
    Exposed(#[from] Exposed),
}

/// Where a secret file was found, which decides the bits it may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// Anywhere on disk: owner only (no bit for group or others).
    Disk,
    /// systemd's `$CREDENTIALS_DIRECTORY`: owner and the ACL mask (group bits).
    Credentials,
}

/// Refuses `mode` for a secret at `path` if group or others may access it.
pub fn check_mode(path: &Path, mode: u32, place: Place) -> Result<(), Exposed> {
    let forbidden = match place {
        Place::Disk => 0o077,
        Place::Credentials => 0o007,
    };
    let who = match (mode & forbidden & 0o070 != 0, mode & forbidden & 0o007 != 0) {
        (false, false) => return Ok(()),
        (true, false) => "its group",
        (false, true) => "every user",
        (true, true) => "its group and every user",
    };
    Err(Exposed { path: path.into(), mode: mode & 0o7777, who })
}

/// Reads a secret file, refusing it if others may access it.
pub fn read_private(path: &Path, place: Place) -> Result<String, SecretFileError> {
    let (text, mode) =
        read_with_mode(path).map_err(|source| SecretFileError::Read { path: path.into(), source })?;
    check_mode(path, mode, place)?;
    Ok(text)
}

/// A file's text and mode, the mode taken from the open file: what is
/// judged is what was read, even if the file is replaced meanwhile.
pub fn read_with_mode(path: &Path) -> std::io::Result<(String, u32)> {
    let mut file = std::fs::File::open(path)?;
    let mode = file.metadata()?.permissions().mode();
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok((text, mode))
}

/// The file systemd's `LoadCredential=` handed this service under
/// `path`'s file name, if there is one: the packaged units pass secret keys
/// to the dynamic user that way, while the file on disk stays root's.
pub fn credential(path: &Path) -> Option<PathBuf> {
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty())?;
    Some(PathBuf::from(dir).join(path.file_name()?)).filter(|p| p.is_file())
}

/// Makes `dir` and any missing parents, each 0700 whatever the umask (they
/// will hold secret keys). A directory that exists is left as it is; the
/// answer is a warning when group or others may write into it (they could
/// swap the keys in it).
pub fn create_private_dir(dir: &Path) -> std::io::Result<Option<String>> {
    let missing: Vec<&Path> =
        dir.ancestors().take_while(|d| !d.as_os_str().is_empty() && !d.exists()).collect();
    if missing.is_empty() {
        let mode = std::fs::metadata(dir)?.permissions().mode();
        let warning = (mode & 0o022 != 0).then(|| {
            format!(
                "{} (mode {:04o}) may be written by others, who could replace the keys in it: \
                 `chmod go-w {}`, or keep keys in a directory of your own",
                dir.display(),
                mode & 0o7777,
                dir.display()
            )
        });
        return Ok(warning);
    }
    for d in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(0o700).create(d) {
            Ok(()) => std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))?,
            // Made meanwhile by someone else: theirs, left alone.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn only_owner_only_secrets_are_read() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o600, 0o400] {
            let path = write(dir.path(), &format!("ok-{mode:o}"), mode);
            assert_eq!(read_private(&path, Place::Disk).unwrap(), "s3cret\n");
        }
        for (mode, who) in [(0o644, "its group and every user"), (0o640, "its group"), (0o606, "every user")]
        {
            let path = write(dir.path(), &format!("loose-{mode:o}"), mode);
            let e = read_private(&path, Place::Disk).unwrap_err().to_string();
            assert!(e.contains(who) && e.contains(&format!("`chmod 600 {}`", path.display())), "{e}");
            assert!(e.contains(&format!("mode {mode:04o}")), "{e}");
        }
        let e = read_private(&dir.path().join("missing"), Place::Disk).unwrap_err();
        assert!(matches!(e, SecretFileError::Read { .. }), "{e}");
    }

    #[test]
    fn credentials_may_show_the_acl_mask_in_the_group_bits() {
        let dir = tempfile::tempdir().unwrap();
        let acl = write(dir.path(), "hub.key_secret", 0o440);
        assert!(read_private(&acl, Place::Credentials).is_ok());
        assert!(read_private(&acl, Place::Disk).is_err(), "on disk the group is a real group");
        let world = write(dir.path(), "world", 0o444);
        assert!(read_private(&world, Place::Credentials).is_err());
    }

    #[test]
    fn new_key_directories_are_private_and_old_ones_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        assert_eq!(create_private_dir(&deep).unwrap(), None);
        for d in [dir.path().join("a"), dir.path().join("a/b"), deep.clone()] {
            assert_eq!(std::fs::metadata(&d).unwrap().permissions().mode() & 0o777, 0o700, "{d:?}");
        }
        std::fs::set_permissions(&deep, std::fs::Permissions::from_mode(0o777)).unwrap();
        let warning = create_private_dir(&deep).unwrap().expect("a warning");
        assert!(warning.contains("chmod go-w"), "{warning}");
        assert_eq!(std::fs::metadata(&deep).unwrap().permissions().mode() & 0o777, 0o777, "left alone");
        std::fs::set_permissions(&deep, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(create_private_dir(&deep).unwrap(), None);
    }
}
