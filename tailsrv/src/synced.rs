//! `--serve-up-to-synced`: stream only what is on disk.
//!
//! tailsrv-collator in `--sync data` (or `interval=MS`) mode appends the synced length of
//! `FILE` to `FILE.synced` (records in `proto::watermark`'s format) after every `fdatasync`. With the flag,
//! tailsrv follows that sidecar through the same watcher as the file and never sends a byte
//! past the last value in it, so no follower receives what a power loss could take back.
//! Until the sidecar exists nothing is sent. The value only grows: the largest seen is kept
//! (the collator starts the sidecar over now and then; see its `watermark` module).

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_lite::future;
use proto::watermark;
use shared::watch::FileWatch;

/// The followed sidecar and the largest synced length read from it.
#[derive(Debug)]
pub(crate) struct Synced {
    sidecar: FileWatch,
    largest: AtomicU64,
}

impl Synced {
    pub(crate) fn new(sidecar: FileWatch) -> Synced {
        Synced {
            sidecar,
            largest: AtomicU64::new(0),
        }
    }

    /// The synced length: the last complete value in the sidecar, or the largest seen.
    pub(crate) fn limit(&self) -> u64 {
        let at = watermark::last_record_at(self.sidecar.len());
        if let (Some(file), Some(at)) = (self.sidecar.file(), at) {
            let mut record = [0u8; watermark::RECORD_LEN as usize];
            if file.read_exact_at(&mut record, at).is_ok() {
                self.largest
                    .fetch_max(watermark::decode(record), Ordering::AcqRel);
            }
        }
        self.largest.load(Ordering::Acquire)
    }

    /// How far `data` may be sent: its length, capped at the synced length.
    pub(crate) fn cap(&self, data: &FileWatch) -> u64 {
        data.len().min(self.limit())
    }

    /// Waits until the data file or the sidecar changes from the lengths seen now, or
    /// `ready` holds.
    pub(crate) async fn wait(&self, data: &FileWatch, ready: impl Fn(&FileWatch) -> bool) {
        let (dlen, slen) = (data.len(), self.sidecar.len());
        let data_moved = data.wait_until(|w| w.len() != dlen || ready(w));
        let sidecar_moved = self.sidecar.wait_until(|s| s.len() != slen);
        future::or(data_moved, sidecar_moved).await
    }
}
