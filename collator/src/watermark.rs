//! The high watermark: how much of the file is known to be on disk, published for tailsrv.
//!
//! After every `fdatasync` the writer appends the synced length, an 8-byte big-endian u64,
//! to `FILE.synced`. tailsrv started with `--serve-up-to-synced` follows that file like any
//! other (inotify: it grew) and streams only up to the last value in it, so no follower ever
//! receives bytes that a power loss could take back (Kafka's high watermark).
//!
//! Appending, not overwriting, is what makes reading it safe without locks: a reader that
//! sees the file's new length sees the whole record under it, and reads the last complete
//! record. To keep it small the writer starts it over once it holds [`COMPACT_AT`] bytes:
//! the new value is written at offset 0 first, then the file is cut to 8 bytes, so it never
//! holds less than one complete, current-or-newer record. Readers keep the largest value
//! they have seen (the synced length never goes down).
//!
//! The sidecar itself is not synced: after a crash the collator recovers the data file and
//! starts the sidecar over from what it found, after syncing it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Sidecar size at which it is started over.
pub const COMPACT_AT: u64 = 64 << 10;

/// `FILE.synced` for `FILE`.
pub fn path_for(file: &Path) -> PathBuf {
    let mut p = file.as_os_str().to_owned();
    p.push(".synced");
    PathBuf::from(p)
}

/// The writer's end of the sidecar.
#[derive(Debug)]
pub struct Watermark {
    file: File,
    len: u64,
}

impl Watermark {
    /// Starts the sidecar at `path` over with `synced` (which must be on disk already).
    pub fn create(path: &Path, synced: u64) -> io::Result<Watermark> {
        let ctx = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(ctx)?;
        let mut w = Watermark { file, len: 0 };
        w.restart(synced).map_err(ctx)?;
        Ok(w)
    }

    /// Publishes `synced`.
    pub fn publish(&mut self, synced: u64) -> io::Result<()> {
        if self.len >= COMPACT_AT {
            return self.restart(synced);
        }
        self.file.write_all_at(&synced.to_be_bytes(), self.len)?;
        self.len += 8;
        Ok(())
    }

    fn restart(&mut self, synced: u64) -> io::Result<()> {
        self.file.write_all_at(&synced.to_be_bytes(), 0)?;
        self.file.set_len(8)?;
        self.len = 8;
        Ok(())
    }
}

/// Reads the last complete value of a sidecar `len` bytes long (the reader's side, as
/// tailsrv does it); `None` if it holds none.
pub fn read_last(file: &File, len: u64) -> io::Result<Option<u64>> {
    if len < 8 {
        return Ok(None);
    }
    let mut b = [0u8; 8];
    file.read_exact_at(&mut b, (len / 8 - 1) * 8)?;
    Ok(Some(u64::from_be_bytes(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("log"));
        let mut w = Watermark::create(&path, 10).unwrap();
        let r = File::open(&path).unwrap();
        let last = || read_last(&r, r.metadata().unwrap().len()).unwrap();
        assert_eq!(last(), Some(10));
        for v in 11..(COMPACT_AT / 8 + 20) {
            w.publish(v).unwrap();
            assert_eq!(last(), Some(v));
        }
        assert!(r.metadata().unwrap().len() <= COMPACT_AT + 8);
    }
}
