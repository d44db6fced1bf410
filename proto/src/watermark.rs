//! The high-watermark sidecar, `FILE.synced`: how much of `FILE` is known to be on disk.
//!
//! The collator (in `--sync data` or `interval=MS` mode) appends one record after every
//! `fdatasync`; tailsrv with `--serve-up-to-synced` reads the last complete record and never
//! streams past it. A record is the synced length as an 8-byte big-endian u64. Appending,
//! not overwriting, is what makes reading safe without locks: a reader that sees the file's
//! new length sees the whole record under it. The writer starts the file over now and then
//! (the new record at offset 0 first, then the file cut to one record), so readers keep the
//! largest value they have seen: the synced length never goes down.

use std::path::{Path, PathBuf};

/// Bytes per record.
pub const RECORD_LEN: u64 = 8;

/// `FILE.synced` for `FILE`.
pub fn path_for(file: &Path) -> PathBuf {
    let mut p = file.as_os_str().to_owned();
    p.push(".synced");
    PathBuf::from(p)
}

/// One record, as written.
pub fn encode(synced: u64) -> [u8; RECORD_LEN as usize] {
    synced.to_be_bytes()
}

/// One record, as read.
pub fn decode(record: [u8; RECORD_LEN as usize]) -> u64 {
    u64::from_be_bytes(record)
}

/// Where the last complete record of a sidecar `len` bytes long starts, if it holds one.
pub fn last_record_at(len: u64) -> Option<u64> {
    (len >= RECORD_LEN).then(|| (len / RECORD_LEN - 1) * RECORD_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records() {
        assert_eq!(decode(encode(1234)), 1234);
        assert_eq!(last_record_at(0), None);
        assert_eq!(last_record_at(7), None);
        assert_eq!(last_record_at(8), Some(0));
        assert_eq!(last_record_at(23), Some(8));
        assert_eq!(
            path_for(Path::new("/x/a.log")),
            Path::new("/x/a.log.synced")
        );
    }
}
