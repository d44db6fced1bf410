//! Files on disk that must survive a crash, written one way by every program here: the
//! collator's journal, the indexer's index files, the consumers' state files, tsmirror's
//! replica and tsbridge's output.
//!
//! - [`replace`]: a durable atomic replace. The new content goes to `PATH.tmp`, is
//!   `fsync`ed, renamed over `PATH`, and the directory is `fsync`ed, so after a crash `PATH`
//!   holds the old content or the new, whole, never a mix or nothing. Every step's error is
//!   reported with the path and the step (the directory sync included: a rename that is not
//!   yet durable is not done).
//! - [`sync_dir`]: the directory sync alone, for a file just created in place.
//! - [`lock_exclusive`]: the single-writer rule. A file has one writer; a second one fails at
//!   once (a non-blocking exclusive `flock`) with an error that says who holds it, never
//!   waits and never writes.
//! - [`segments`]: a segmented log, one log as a directory of segment files named by their
//!   global base offset and first message number, rolled and deleted by whole segments.
//!
//! Why `fsync` (not `fdatasync`) before the rename: the temporary is a new file, so its size
//! and blocks are metadata that `fdatasync` would sync anyway; one rule is easier to trust.

#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

pub mod segments;

/// `path` with `suffix` appended to its file name (`FILE.tmp`, `FILE.lock`).
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name: OsString = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// An `io::Error` of the same kind as `e`, saying what was being done to which file.
pub fn context(path: &Path, what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// Replaces `path` with `content`, durably and atomically (see the crate docs). Returns the
/// new file, open for reading and writing (its position at the end of `content`), for
/// callers that go on appending to it.
pub fn replace(path: &Path, content: &[u8]) -> io::Result<File> {
    replace_with(path, |f| f.write_all(content))
}

/// [`replace`] with the content written by `write` into the temporary file.
pub fn replace_with(
    path: &Path,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<File> {
    let tmp = sibling(path, ".tmp");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| context(&tmp, "creating", e))?;
    write(&mut file).map_err(|e| context(&tmp, "writing", e))?;
    file.sync_all().map_err(|e| context(&tmp, "syncing", e))?;
    std::fs::rename(&tmp, path).map_err(|e| context(path, "renaming a new version into", e))?;
    sync_dir(path)?;
    Ok(file)
}

/// `fsync`s the directory that holds `path`, so that a rename or creation there is durable.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| context(path, "syncing the directory of", e))
}

/// Takes `file`'s exclusive lock without waiting. Held by another process (or another open
/// file description in this one): an error of kind `WouldBlock` saying that another `writer`
/// (e.g. "collator") holds `path`; any other failure: an error naming the path.
pub fn lock_exclusive(file: &File, path: &Path, writer: &str) -> io::Result<()> {
    match flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "another {writer} is writing {} (it holds the file's lock); a file has one writer",
                path.display()
            ),
        )),
        Err(e) => Err(context(path, "locking", e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom};

    #[test]
    fn replace_is_whole_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        std::fs::write(&path, b"old content").unwrap();
        let mut f = replace(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert!(!sibling(&path, ".tmp").exists());
        // The returned file is the new one, open for appending and reading.
        f.write_all(b"+more").unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        let mut back = String::new();
        f.read_to_string(&mut back).unwrap();
        assert_eq!(back, "new+more");
        assert_eq!(std::fs::read(&path).unwrap(), b"new+more");
    }

    #[test]
    fn a_failed_write_keeps_the_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        std::fs::write(&path, b"old").unwrap();
        let e = replace_with(&path, |f| {
            f.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert!(e.to_string().contains("writing"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
    }

    #[test]
    fn a_rename_that_cannot_happen_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a non-empty directory: rename(2) refuses to replace it.
        let path = dir.path().join("taken");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("inside"), b"x").unwrap();
        let e = replace(&path, b"new").unwrap_err();
        assert!(e.to_string().contains("renaming a new version into"), "{e}");
        assert!(e.to_string().contains("taken"), "{e}");
    }

    #[test]
    fn a_missing_directory_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no").join("such").join("state");
        let e = replace(&path, b"x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("creating"), "{e}");
    }

    #[test]
    fn a_second_writer_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let first = File::create(&path).unwrap();
        lock_exclusive(&first, &path, "collator").unwrap();
        // Another open file description conflicts as another process's would.
        let second = File::open(&path).unwrap();
        let e = lock_exclusive(&second, &path, "collator").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(e.to_string().contains("another collator is writing"), "{e}");
        drop(first);
        lock_exclusive(&second, &path, "collator").unwrap();
    }

    #[test]
    fn a_lock_held_by_another_process_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        File::create(&path).unwrap();
        // flock(1) from util-linux holds the lock in a child process for a while.
        let Ok(mut holder) = std::process::Command::new("flock")
            .arg("-x")
            .arg(&path)
            .args(["sleep", "5"])
            .spawn()
        else {
            eprintln!("note: flock(1) is not installed, skipping");
            return;
        };
        let file = File::open(&path).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let refused = loop {
            match lock_exclusive(&file, &path, "mirror") {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break true,
                Ok(()) => {
                    // The child has not taken it yet: let go and look again.
                    flock(&file, FlockOperation::Unlock).unwrap();
                    if std::time::Instant::now() > deadline {
                        break false;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("{e}"),
            }
        };
        let _ = holder.kill();
        let _ = holder.wait();
        assert!(refused, "the other process's lock was never seen");
    }
}
