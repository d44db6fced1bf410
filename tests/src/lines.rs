//! Test data that says where it sits: text lines that carry their own number (so a line read
//! back names its offset in the file), and a thread that appends them while a test runs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::append;

/// Text lines that carry their own number, so a line says where it sits in the file.
#[derive(Default)]
pub struct Lines {
    /// Every line so far: what the file holds once they are all appended.
    pub data: Vec<u8>,
    /// Offset where line i starts.
    pub starts: Vec<usize>,
}

impl Lines {
    pub fn new() -> Lines {
        Lines::default()
    }

    /// Appends `n` more lines (of varying length) to the test's copy; returns their bytes.
    pub fn more(&mut self, n: usize) -> Vec<u8> {
        let from = self.data.len();
        for _ in 0..n {
            let i = self.starts.len();
            self.starts.push(self.data.len());
            let pad = "x".repeat(i * 7 % 90);
            self.data
                .extend_from_slice(format!("line {i:09} {pad}\n").as_bytes());
        }
        self.data[from..].to_vec()
    }

    /// The offset of the line `bytes` starts with (which must be a whole line's start).
    pub fn offset_of_first(&self, bytes: &[u8]) -> usize {
        let n: usize = std::str::from_utf8(&bytes[5..14]).unwrap().parse().unwrap();
        self.starts[n]
    }
}

/// Appends lines from a thread until told to stop (bounded in count), keeping the test's copy.
pub struct Writer {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Lines>>,
}

impl Writer {
    /// Starts appending to `path`, 40 lines every 2 ms or so, after what `lines` holds.
    pub fn start(path: PathBuf, mut lines: Lines) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            // Bounded: at most 20,000 appends (~60 MB), whatever the test does.
            for _ in 0..20_000 {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let chunk = lines.more(40);
                append(&path, &chunk);
                // Pacing, not synchronisation: keeps the stream flowing for a while.
                std::thread::sleep(Duration::from_millis(2));
            }
            lines
        });
        Writer {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops the thread; returns every line, the ones it appended included.
    pub fn finish(mut self) -> Lines {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
