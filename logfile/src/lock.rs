//! The single-writer rule: a file has one writer; a second one fails at once (a
//! non-blocking exclusive `flock`) with an error that says who holds it, never waits and
//! never writes. The collator, tsmirror, tsbridge and the consumers' state files take it.

use std::fs::File;
use std::io;
use std::path::Path;

use rustix::fs::{flock, FlockOperation};

use crate::context;

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
