//! The high watermark: how much of the file is known to be on disk, published for tailsrv.
//!
//! After every `fdatasync` the writer appends the synced length to `FILE.synced` (the
//! record format is `proto::watermark`'s). tailsrv started with `--serve-up-to-synced`
//! follows that file like any other (inotify: it grew) and streams only up to the last value
//! in it, so no follower ever receives bytes that a power loss could take back (Kafka's high
//! watermark). To keep it small the writer starts it over once it holds [`COMPACT_AT`]
//! bytes: the new value is written at offset 0 first, then the file is cut to one record,
//! so it never holds less than one complete, current-or-newer record.
//!
//! The sidecar itself is not synced: after a crash the collator recovers the data file and
//! starts the sidecar over from what it found, after syncing it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use proto::watermark::RECORD_LEN;

/// Sidecar size at which it is started over.
pub const COMPACT_AT: u64 = 64 << 10;

pub use proto::watermark::path_for;

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
        self.file
            .write_all_at(&proto::watermark::encode(synced), self.len)?;
        self.len += RECORD_LEN;
        Ok(())
    }

    fn restart(&mut self, synced: u64) -> io::Result<()> {
        self.file
            .write_all_at(&proto::watermark::encode(synced), 0)?;
        self.file.set_len(RECORD_LEN)?;
        self.len = RECORD_LEN;
        Ok(())
    }
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
        let last = || {
            let at = proto::watermark::last_record_at(r.metadata().unwrap().len())?;
            let mut b = [0u8; RECORD_LEN as usize];
            r.read_exact_at(&mut b, at).unwrap();
            Some(proto::watermark::decode(b))
        };
        assert_eq!(last(), Some(10));
        for v in 11..(COMPACT_AT / 8 + 20) {
            w.publish(v).unwrap();
            assert_eq!(last(), Some(v));
        }
        assert!(r.metadata().unwrap().len() <= COMPACT_AT + 8);
    }
}
