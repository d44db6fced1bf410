//! The durable atomic replace, the one way every program here replaces a small file (the
//! collator's journal, the indexer's index files, the consumers' state files): the new content
//! goes to `PATH.tmp`, is `fsync`ed, renamed over `PATH`, and the directory is `fsync`ed, so
//! after a crash `PATH` holds the old content or the new, whole, never a mix or nothing.
//! Every step's error is reported with the path and the step (the directory sync included: a
//! rename that is not yet durable is not done).
//!
//! Why `fsync` (not `fdatasync`) before the rename: the temporary is a new file, so its size
//! and blocks are metadata that `fdatasync` would sync anyway; one rule is easier to trust.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

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
}
