use super::*;
use crate::generation::MANIFEST;

/// A small cache, and flushes only when asked.
pub(crate) fn config() -> sled::Config {
    sled::Config::new().cache_capacity(1 << 20).flush_every_ms(None)
}

fn garble(path: &Path) {
    for entry in std::fs::read_dir(path).unwrap().flatten() {
        if entry.path().is_file() {
            std::fs::write(entry.path(), b"\xde\xad\xbe\xef not a sled file").unwrap();
        }
    }
}

#[test]
fn an_io_error_is_described_as_the_system_says_it() {
    let full = std::io::Error::from_raw_os_error(28);
    let said = full.to_string();
    assert_eq!(describe(&sled::Error::Io(full)), said);
    let cloned = sled::Error::Io(std::io::Error::from_raw_os_error(28)).clone();
    assert!(describe(&cloned).starts_with("No space left on device"), "{}", describe(&cloned));
}

#[test]
fn a_damaged_store_is_moved_aside_and_three_copies_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    {
        let opened = open(&path, config()).unwrap();
        assert!(opened.recovery.is_none());
        opened.db.insert("x", "1").unwrap();
        opened.db.flush().unwrap();
    }
    let mut set_aside = Vec::new();
    for round in 1..=5 {
        garble(&path);
        let opened = open(&path, config()).unwrap_or_else(|e| panic!("round {round}: {e}"));
        let recovery = opened.recovery.clone().expect("recovered");
        let aside = recovery.aside.clone().expect("set aside");
        assert!(aside.exists());
        // With a fresh conf, sled opens the garbage as an empty log.
        assert!(recovery.salvaged.is_empty(), "garbage: nothing could be read");
        assert!(recovery.describe().contains("held nothing readable"), "{}", recovery.describe());
        assert_eq!(opened.db.get("x").unwrap(), None, "a fresh store");
        opened.db.insert("x", "1").unwrap();
        opened.db.flush().unwrap();
        set_aside.push(aside);
    }
    let kept: Vec<PathBuf> = asides(&path).unwrap().into_iter().map(|(_, p)| p).collect();
    assert_eq!(kept, set_aside[2..], "the three newest are kept, the oldest deleted");
    assert!(!set_aside[0].exists() && !set_aside[1].exists());
}

#[test]
fn a_store_with_a_damaged_conf_is_salvaged_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    {
        let opened = open(&path, config()).unwrap();
        for i in 0..100u32 {
            opened.db.open_tree("t").unwrap().insert(i.to_be_bytes(), "v").unwrap();
        }
        opened.db.flush().unwrap();
    }
    std::fs::write(path.join("conf"), b"\x00\xffnot a sled config\n").unwrap();
    let opened = open(&path, config()).unwrap();
    let recovery = opened.recovery.clone().expect("recovered");
    assert!(recovery.damage.contains("conf file cannot be read"), "{}", recovery.damage);
    assert_eq!(recovery.salvaged.get("t"), Some(&100), "{}", recovery.describe());
    assert_eq!(recovery.cut_short, Some(vec![]));
    assert_eq!(opened.db.open_tree("t").unwrap().len(), 100);
    let aside = recovery.aside.expect("set aside");
    assert_eq!(std::fs::read(aside.join("conf.damaged")).unwrap(), b"\x00\xffnot a sled config\n");
}

#[test]
fn a_panic_inside_sled_is_damage_with_its_message_and_no_crash_report() {
    let e = guarded("reading", || -> sled::Result<()> { panic!("tried to serialize Uninitialized") })
        .unwrap_err();
    assert!(is_damage(&e));
    assert!(e.to_string().contains("sled failed reading: tried to serialize Uninitialized"), "{e}");
    // Outside guarded, panics reach the hook there was again.
    assert!(!GUARDED.with(|g| g.get()));
}

#[test]
fn only_damage_counts_as_damage() {
    let io = |code| sled::Error::Io(std::io::Error::from_raw_os_error(code));
    assert!(!is_damage(&io(libc::EACCES)) && !is_damage(&io(libc::ENOSPC)));
    assert!(is_damage(&sled::Error::Corruption { at: None, bt: () }));
    assert!(is_damage(&sled::Error::Io(std::io::ErrorKind::UnexpectedEof.into())));
    assert!(advice(&io(libc::ENOSPC)).contains("disk is full"));
}

#[test]
fn not_damage_leaves_the_store_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let opened = open(&path, config()).unwrap();
    // The store is in use: sled's lock, not damage.
    let err = open(&path, config()).err().expect("locked");
    assert!(err.to_string().contains("another process has it open"), "{err}");
    assert!(asides(&path).unwrap().is_empty(), "nothing was moved");
    drop(opened);
}

#[test]
fn a_store_behind_its_manifest_says_it_lost_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    {
        let opened = open(&path, config()).unwrap();
        let (generation, loss) = Generation::open(&path, &opened).unwrap();
        assert!(loss.is_none(), "a new store");
        opened.db.insert("x", "1").unwrap();
        generation.flush(&opened.db).unwrap();
    }
    // The log cut short: the store is back to where it was before.
    std::fs::write(path.join(MANIFEST), "7\n").unwrap();
    let opened = open(&path, config()).unwrap();
    let (generation, loss) = Generation::open(&path, &opened).unwrap();
    let loss = loss.expect("behind its manifest");
    assert!(loss.describe().contains("made 7 flushes durable"), "{}", loss.describe());
    assert_eq!(loss.aside, None);
    generation.flush(&opened.db).unwrap();
    drop((generation, opened));
    let opened = open(&path, config()).unwrap();
    let (generation, loss) = Generation::open(&path, &opened).unwrap();
    assert!(loss.is_none(), "the manifest follows the store again");
    // A clean close lists every tree's entries: one gone since is noticed.
    drop(generation);
    opened.db.remove("x").unwrap();
    opened.db.flush().unwrap();
    drop(opened);
    let opened = open(&path, config()).unwrap();
    let loss = Generation::open(&path, &opened).unwrap().1.expect("an entry gone since the clean close");
    assert!(loss.describe().contains("held 1 entries when the store was last closed"), "{}", loss.describe());
}

#[test]
fn free_bytes_reads_the_file_system() {
    let dir = tempfile::tempdir().unwrap();
    assert!(free_bytes(dir.path()).unwrap() > 0);
    let (free, total) = space(dir.path()).unwrap();
    assert!(free <= total);
    assert!(has_room(dir.path(), 1));
    assert!(free_bytes(&dir.path().join("missing")).is_err());
}
