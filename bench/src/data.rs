//! The data file every byte-streaming section reads: real log lines, written once per run.
//!
//! Real bytes, not a sparse file: a hole reads as zero pages the kernel never caches, which
//! would flatter sendfile and the indexer's scan. Lines vary in length (about 100 bytes on
//! average, like a service log) so the indexer cannot get lucky with a fixed stride. The
//! writer records where each line starts: that is the ground truth the indexer's `offset-of`
//! answers are checked against, computed here and not by the code under test.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::run::Result;

pub struct DataFile {
    pub path: PathBuf,
    pub len: u64,
    /// Byte offset where each line starts.
    pub line_starts: Vec<u64>,
}

impl DataFile {
    /// Writes about `target` bytes of whole lines to `path`.
    pub fn create(path: &Path, target: u64) -> Result<DataFile> {
        let ctx = |e: std::io::Error| format!("writing {}: {e}", path.display());
        let mut out = BufWriter::with_capacity(1 << 20, File::create(path).map_err(ctx)?);
        let mut rng = Rng(0x5EED_1234_ABCD_0001);
        let mut line_starts = Vec::with_capacity((target / 100 + 1) as usize);
        let mut len = 0u64;
        let mut line = Vec::with_capacity(256);
        const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ";
        const LEVELS: [&str; 4] = ["INFO ", "DEBUG", "WARN ", "INFO "];
        while len < target {
            let n = line_starts.len() as u64;
            line.clear();
            let r = rng.next();
            write!(
                line,
                "2024-05-01T12:{:02}:{:02}.{:06}Z {} svc=api req={n:010} msg=",
                (n / 60_000) % 60,
                (n / 1000) % 60,
                r % 1_000_000,
                LEVELS[(r >> 20) as usize % 4],
            )
            .expect("writing to a Vec");
            // 0..=76 payload bytes after a 61-byte prefix: 100 bytes per line on average.
            let payload = (r >> 32) % 77;
            for _ in 0..payload {
                line.push(ALNUM[(rng.next() % ALNUM.len() as u64) as usize]);
            }
            line.push(b'\n');
            out.write_all(&line).map_err(ctx)?;
            line_starts.push(len);
            len += line.len() as u64;
        }
        // On disk before anything is measured: a log being served was usually written long
        // ago, and the indexer syncs the log before its own entries, which would otherwise
        // bill it for writing back this fresh file.
        out.into_inner()
            .map_err(|e| ctx(e.into_error()))?
            .sync_all()
            .map_err(ctx)?;
        Ok(DataFile {
            path: path.to_owned(),
            len,
            line_starts,
        })
    }

    pub fn lines(&self) -> u64 {
        self.line_starts.len() as u64
    }
}

/// xorshift64*: deterministic, fast, good enough to pick line lengths and query numbers.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
