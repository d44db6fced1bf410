//! Bulk splitting of a newline- or NUL-framed log on several threads: the cold build, and
//! catching up after the indexer was down.
//!
//! Why it can be parallel: with a delimiter framing, every delimiter ends a message wherever
//! reading starts, so segments of the log can be counted independently. Only the index
//! entries depend on what came before: entry j is the end of message j*K, so a segment must
//! know how many messages precede it before it can tell which of its delimiters are entries.
//!
//! How: the range is cut into segments small enough to stay in a core's cache (256 KiB), dealt
//! round-robin to the threads. A thread reads its segment (one `pread`), counts delimiters per
//! 2 KiB block (SIMD), then waits for the number of messages before its segment, which the
//! thread that had the previous segment publishes as soon as *it* has counted; it publishes
//! its own running total at once and only then locates its entries, in blocks still in cache.
//! So the threads hand each other one number per segment and never wait for each other's
//! locating; each byte is copied once and counted once, as in the one-thread path
//! ([`proto::framing::Splitter::feed_sparse`]). With two cores this splits a log faster
//! than `wc -l` counts it.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::index::read_at;

/// Bytes per segment: one `pread`, and small enough to stay in a core's L2 cache while it is
/// counted and then searched for entries.
const SEGMENT: usize = 128 << 10;

/// Bytes counted at once; an entry is then located inside one block.
const BLOCK: usize = 2048;

/// Below this many pending bytes the one-thread path is as fast (threads cost a spawn).
pub const MIN_BYTES: u64 = 32 << 20;

/// Bytes split between two publications of the index, when splitting in bulk: a few
/// milliseconds of work, so queries see a cold build progress.
pub const BATCH: u64 = 64 << 20;

/// What a bulk scan found.
#[derive(Debug, Default)]
pub struct Scanned {
    /// Messages completed in the range.
    pub completed: u64,
    /// Where the last of them ends, if any ended in the range.
    pub last_end: Option<u64>,
}

/// Not yet published.
const PENDING: u64 = u64::MAX;

/// How to split: with which delimiter, on how many threads, one entry every `stride`.
#[derive(Debug, Clone, Copy)]
pub struct Bulk {
    pub delim: u8,
    pub threads: usize,
    pub stride: u64,
}

impl Bulk {
    /// Splits `[from, to)` of `file`.
    ///
    /// `until_mark` counts the message ends still to pass before the next entry (1 = the very
    /// next end) and is left counting for what follows `to`, as with `feed_sparse`; each entry,
    /// the offset just past its delimiter, is appended to `marks` in order. Returns None if the
    /// file ended before `to` (it was truncated).
    pub fn scan(
        &self,
        file: &File,
        from: u64,
        to: u64,
        until_mark: &mut u64,
        marks: &mut Vec<u64>,
    ) -> io::Result<Option<Scanned>> {
        let Bulk {
            delim,
            threads,
            stride,
        } = *self;
        let stride = stride.max(1);
        let segments = (to - from).div_ceil(SEGMENT as u64) as usize;
        let threads = threads.clamp(1, segments.max(1));
        let first_mark = match *until_mark {
            0 => stride,
            u => u.min(stride),
        };
        // before[i]: delimiters in the range before segment i.
        let before: Vec<AtomicU64> = (0..=segments).map(|_| AtomicU64::new(PENDING)).collect();
        before[0].store(0, Ordering::Release);
        let shared = Shared {
            file,
            delim,
            from,
            to,
            threads,
            stride,
            first_mark,
            before,
            failed: AtomicBool::new(false),
        };
        let results: Vec<io::Result<Found>> = std::thread::scope(|s| {
            let helpers: Vec<_> = (1..threads)
                .map(|w| {
                    let shared = &shared;
                    s.spawn(move || shared.work(w))
                })
                .collect();
            let mut results = vec![shared.work(0)];
            results.extend(helpers.into_iter().map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(io::Error::other("a scanning thread panicked")))
            }));
            results
        });
        let mut found = Vec::with_capacity(threads);
        let mut first_error = None;
        for r in results {
            match r {
                Ok(f) => found.push(f),
                // A thread that only stopped because another failed says so; report the cause.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return match e.kind() {
                io::ErrorKind::UnexpectedEof => Ok(None),
                _ => Err(e),
            };
        }
        let completed = shared.before[segments].load(Ordering::Acquire);
        let start = marks.len();
        for f in &found {
            marks.extend_from_slice(&f.marks);
        }
        marks[start..].sort_unstable();
        // The countdown for what comes next.
        *until_mark = if completed < first_mark {
            first_mark - completed
        } else {
            stride - (completed - first_mark) % stride
        };
        Ok(Some(Scanned {
            completed,
            last_end: found.iter().filter_map(|f| f.last_end).max(),
        }))
    }
}

/// What every thread of one scan reads.
struct Shared<'a> {
    file: &'a File,
    delim: u8,
    from: u64,
    to: u64,
    threads: usize,
    stride: u64,
    /// The delimiter number (1-based, from `from`) of the first entry.
    first_mark: u64,
    before: Vec<AtomicU64>,
    /// Set by a thread that fails, so that none waits forever for its counts.
    failed: AtomicBool,
}

/// Segments a thread may count ahead of the one it waits for: enough to ride out the other
/// thread being descheduled for a moment, few enough to stay in cache.
const AHEAD: usize = 3;

/// A segment read and counted, not yet searched for entries.
struct Counted {
    i: usize,
    at: u64,
    len: usize,
    data: Box<[u8]>,
    counts: Box<[u64]>,
    total: u64,
}

impl Counted {
    fn new() -> Counted {
        Counted {
            i: 0,
            at: 0,
            len: 0,
            data: vec![0; SEGMENT].into_boxed_slice(),
            counts: vec![0; SEGMENT / BLOCK].into_boxed_slice(),
            total: 0,
        }
    }
}

/// One thread's share of the result.
struct Found {
    marks: Vec<u64>,
    last_end: Option<u64>,
}

impl Shared<'_> {
    fn work(&self, w: usize) -> io::Result<Found> {
        let r = self.segments_of(w);
        if r.is_err() {
            self.failed.store(true, Ordering::Release);
        }
        r
    }

    fn segments_of(&self, w: usize) -> io::Result<Found> {
        let mut found = Found {
            marks: Vec::new(),
            last_end: None,
        };
        let mut mine = (w..self.before.len() - 1).step_by(self.threads).peekable();
        // Counted segments waiting for their predecessors' counts, oldest first.
        let mut ring: VecDeque<Counted> = VecDeque::with_capacity(AHEAD);
        let mut spare: Vec<Counted> = Vec::new();
        loop {
            // Locate in the oldest counted segment as soon as the count before it is known.
            if let Some(oldest) = ring.front() {
                let ready = self.before[oldest.i].load(Ordering::Acquire);
                let must = ring.len() == AHEAD || mine.peek().is_none();
                if ready != PENDING || must {
                    let seg = ring.pop_front().expect("ring is not empty");
                    let before = self.wait_for(seg.i)?;
                    self.before[seg.i + 1].store(before + seg.total, Ordering::Release);
                    self.locate(&seg, before, &mut found);
                    spare.push(seg);
                    continue;
                }
            }
            // Otherwise read and count the next segment meanwhile.
            let Some(i) = mine.next() else {
                return Ok(found);
            };
            let mut seg = spare.pop().unwrap_or_else(Counted::new);
            self.count(i, &mut seg)?;
            ring.push_back(seg);
        }
    }

    /// Reads segment `i` into `seg` and counts its delimiters per block.
    fn count(&self, i: usize, seg: &mut Counted) -> io::Result<()> {
        seg.i = i;
        seg.at = self.from + (i * SEGMENT) as u64;
        let len = (self.to - seg.at).min(SEGMENT as u64) as usize;
        seg.len = len;
        read_exact_at(self.file, &mut seg.data[..len], seg.at)?;
        seg.total = 0;
        for (c, block) in seg.counts.iter_mut().zip(seg.data[..len].chunks(BLOCK)) {
            *c = bytecount::count(block, self.delim) as u64;
            seg.total += *c;
        }
        Ok(())
    }

    /// Finds the entries of a counted segment, `before` delimiters preceding it.
    fn locate(&self, seg: &Counted, before: u64, found: &mut Found) {
        if seg.total == 0 {
            return;
        }
        let data = &seg.data[..seg.len];
        if let Some(last) = memchr::memrchr(self.delim, data) {
            found.last_end = Some(seg.at + last as u64 + 1);
        }
        // The first entry numbered after `before`, then walk the blocks to each one.
        let mut next = if before < self.first_mark {
            self.first_mark
        } else {
            self.first_mark + ((before - self.first_mark) / self.stride + 1) * self.stride
        };
        let mut seen = before;
        for (b, (&c, block)) in seg.counts.iter().zip(data.chunks(BLOCK)).enumerate() {
            while next <= seen + c {
                let nth = (next - seen - 1) as usize;
                let Some(i) = memchr::memchr_iter(self.delim, block).nth(nth) else {
                    unreachable!("the block holds {c} delimiters")
                };
                found.marks.push(seg.at + (b * BLOCK + i + 1) as u64);
                next += self.stride;
            }
            seen += c;
        }
    }

    /// Delimiters before segment `i`, once the thread that had segment `i - 1` has counted.
    fn wait_for(&self, i: usize) -> io::Result<u64> {
        let mut spins = 0u32;
        loop {
            let v = self.before[i].load(Ordering::Acquire);
            if v != PENDING {
                return Ok(v);
            }
            if self.failed.load(Ordering::Acquire) {
                return Err(io::Error::new(
                    io::ErrorKind::Interrupted,
                    "another scanning thread failed",
                ));
            }
            // The other thread is counting a segment in cache: it is microseconds away.
            spins += 1;
            if spins < 1000 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// Fills `buf` from `pos`; UnexpectedEof if the file ends first.
fn read_exact_at(file: &File, mut buf: &mut [u8], mut pos: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match read_at(file, buf, pos)? {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the log ends at byte {pos}"),
                ))
            }
            n => {
                buf = &mut buf[n..];
                pos += n as u64;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// The naive answer: every delimiter's end, and the marks a countdown of `until` picks.
    fn naive(data: &[u8], delim: u8, stride: u64, mut until: u64) -> (Vec<u64>, u64, u64) {
        let mut marks = Vec::new();
        let mut n = 0;
        for (i, &b) in data.iter().enumerate() {
            if b == delim {
                n += 1;
                until -= 1;
                if until == 0 {
                    marks.push(i as u64 + 1);
                    until = stride;
                }
            }
        }
        (marks, n, until)
    }

    #[test]
    fn matches_a_naive_count_at_every_phase() {
        // Pseudo-random lines, some segments without any delimiter at all.
        let mut data = Vec::new();
        let mut x = 12345u64;
        while data.len() < 3 * SEGMENT + 777 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = if x >> 60 == 0 {
                SEGMENT + 5
            } else {
                (x >> 33) as usize % 300
            };
            data.extend(std::iter::repeat_n(b'a', len));
            data.push(b'\n');
        }
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&data).unwrap();
        for threads in [1, 2, 3] {
            for (stride, until) in [(64, 64), (64, 1), (64, 17), (7, 3), (1, 1)] {
                for from in [0u64, 1000] {
                    let to = data.len() as u64 - 3;
                    let (want, n, left) =
                        naive(&data[from as usize..to as usize], b'\n', stride, until);
                    let mut marks = vec![0];
                    let mut u = until;
                    let bulk = Bulk {
                        delim: b'\n',
                        threads,
                        stride,
                    };
                    let got = bulk
                        .scan(&f, from, to, &mut u, &mut marks)
                        .unwrap()
                        .unwrap();
                    let want: Vec<u64> = want.iter().map(|m| m + from).collect();
                    assert_eq!(&marks[1..], &want[..], "{threads} threads, stride {stride}");
                    assert_eq!(got.completed, n);
                    assert_eq!(u, left);
                    let last = data[..to as usize].iter().rposition(|&b| b == b'\n');
                    assert_eq!(got.last_end, last.map(|l| l as u64 + 1));
                }
            }
        }
        // A file shorter than the range: None, not an error.
        let mut u = 64;
        let bulk = Bulk {
            delim: b'\n',
            threads: 2,
            stride: 64,
        };
        let r = bulk.scan(&f, 0, data.len() as u64 + 10, &mut u, &mut Vec::new());
        assert!(r.unwrap().is_none());
    }
}
