//! tailsrv-indexer on a segmented log (`logfile::segments`, issue #19): the real binary, real
//! TCP on 127.0.0.1, logs built in a temp directory with that module (create, roll, remove)
//! and by appending bytes to the active segment, as a writer does.
//!
//! Ground truth never comes from the indexer's code: the test keeps every byte it ever
//! appended, in order, and finds message starts by a naive scan of those bytes for
//! newlines. Global offsets and numbers are positions in that history, whatever retention
//! deleted since.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use logfile::segments::{self, Log, Marker, SegmentName};
use rustix::process::Signal;
use tests::framed::QueryClient;
use tests::*;

const BIN: &str = "tailsrv-indexer";

/// A segmented log written by the test, and everything it ever held.
struct Written {
    dir: PathBuf,
    /// Every byte appended, in order: offset N is `history[N]`.
    history: Vec<u8>,
    /// Where retention has deleted up to: the start's base offset.
    start: u64,
    seed: u64,
}

impl Written {
    fn create(dir: &Path) -> Written {
        let marker = Marker {
            framing: Some("newline".into()),
        };
        Log::create(dir, &marker).unwrap();
        Written {
            dir: dir.to_owned(),
            history: Vec::new(),
            start: 0,
            seed: 1,
        }
    }

    /// A log of `sealed` sealed segments of `each` messages, and `active` in the active one.
    fn sealed(dir: &Path, sealed: usize, each: usize, active: usize) -> Written {
        let mut w = Written::create(dir);
        for _ in 0..sealed {
            w.append(each);
            w.roll();
        }
        w.append(active);
        w
    }

    fn log(&self) -> Log {
        Log::open(&self.dir).unwrap()
    }

    /// Appends `n` newline messages of assorted lengths to the active segment.
    fn append(&mut self, n: usize) {
        let mut data = Vec::new();
        for _ in 0..n {
            self.seed = self
                .seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = (self.seed >> 33) % 40;
            data.extend((0..len).map(|i| b'a' + (i % 26) as u8));
            data.push(b'\n');
        }
        append(&self.log().active().path, &data);
        self.history.extend_from_slice(&data);
    }

    /// Message starts, global (a naive scan of the history), and the count.
    fn starts(&self) -> (Vec<u64>, u64) {
        let mut starts = vec![0];
        for (i, b) in self.history.iter().enumerate() {
            if *b == b'\n' {
                starts.push(i as u64 + 1);
            }
        }
        let count = starts.len() as u64 - 1;
        (starts, count)
    }

    /// Seals the active segment and starts the next one where it ends.
    fn roll(&mut self) {
        let (_, count) = self.starts();
        segments::roll(
            &self.dir,
            SegmentName {
                base: self.history.len() as u64,
                first_message: count,
            },
        )
        .unwrap();
    }

    /// Retention: deletes the oldest `n` sealed segments.
    fn expire(&mut self, n: usize) {
        let log = self.log();
        for s in &log.segments()[..n] {
            assert!(s.name != log.active().name, "never the active segment");
            segments::remove(s).unwrap();
        }
        self.start = self.log().start().base;
    }

    /// The start as (offset, message number), from the history.
    fn start_place(&self) -> (u64, u64) {
        let (starts, _) = self.starts();
        let msg = starts.partition_point(|&s| s < self.start) as u64;
        (self.start, msg)
    }
}

fn start_indexer(dir: &Path, extra: &[&str]) -> Proc {
    indexer(dir).args(["--stride", "4"]).args(extra).start()
}

/// Starts an indexer of `w`, waits until it has caught up and checks every answer.
fn start_checked(w: &Written, extra: &[&str]) -> (Proc, QueryClient) {
    let ix = start_indexer(&w.dir, extra);
    let mut c = QueryClient::new(&ix);
    wait_caught_up(&mut c, w);
    check_all(&mut c, w);
    (ix, c)
}

/// Waits until `end` answers the history's end and count.
fn wait_caught_up(c: &mut QueryClient, w: &Written) {
    let (_, count) = w.starts();
    let want = format!("{} {count}", w.history.len());
    let mut last = String::new();
    let ok = eventually(PATIENCE, || {
        last = c.ask("end");
        last == want
    });
    assert!(ok, "end answered {last:?}, the log's end is {want:?}");
    // Sealed segments load beside the active one: `loading` (never a wrong answer) until then.
    for seg in w.log().segments() {
        let q = format!("offset-of {}", seg.name.first_message);
        let ok = eventually(PATIENCE, || {
            last = c.ask(&q);
            !last.starts_with("error: loading")
        });
        assert!(ok, "{q} still answers {last:?}");
    }
}

/// Checks every answer against the naive scan: start, end, count, offset-of every message
/// (below the start: gone), message-at every byte (below the start: gone), and past the end.
fn check_all(c: &mut QueryClient, w: &Written) {
    let (starts, count) = w.starts();
    let (start_off, start_msg) = w.start_place();
    assert_eq!(c.ask("start"), format!("{start_off} {start_msg}"));
    assert_eq!(c.ask("end"), format!("{} {count}", w.history.len()));
    assert_eq!(c.number("count"), count);
    let qs: Vec<String> = (0..=count).map(|n| format!("offset-of {n}")).collect();
    for (n, a) in c.ask_all(&qs).iter().enumerate() {
        if (n as u64) < start_msg {
            assert!(a.starts_with("error: gone: "), "offset-of {n}: {a}");
            assert!(
                a.contains(&format!("message {start_msg} (byte {start_off})")),
                "offset-of {n}: {a}"
            );
        } else {
            assert_eq!(a, &starts[n].to_string(), "offset-of {n}");
        }
    }
    assert!(c
        .ask(&format!("offset-of {}", count + 1))
        .starts_with("error: not-yet: "));
    let len = w.history.len() as u64;
    let qs: Vec<String> = (0..len).map(|b| format!("message-at {b}")).collect();
    for (b, a) in c.ask_all(&qs).iter().enumerate() {
        let b = b as u64;
        if b < start_off {
            assert!(a.starts_with("error: gone: "), "message-at {b}: {a}");
        } else {
            let want = starts.partition_point(|&s| s <= b) - 1;
            assert_eq!(a, &want.to_string(), "message-at {b}");
        }
    }
    assert!(c
        .ask(&format!("message-at {len}"))
        .starts_with("error: not-yet: "));
}

fn index_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn a_segmented_log_answers_as_its_concatenation_through_rolls_and_retention() {
    let tmp = tempdir();
    let dir = tmp.path().join("log");
    let idx = tmp.path().join("log.idx");
    let mut w = Written::create(&dir);
    w.append(30);
    w.roll();
    w.append(17);
    w.roll();
    w.append(5);
    let (ix, mut c) = start_checked(&w, &[]);
    // Index files beside the log, one per segment; none inside it.
    assert_eq!(index_files(&idx).len(), 3, "{:?}", index_files(&idx));
    assert!(index_files(&dir).iter().all(|f| !f.ends_with(".idx")));

    // Growth, then rolls while running: several at once too.
    w.append(9);
    wait_caught_up(&mut c, &w);
    w.roll();
    w.append(11);
    w.roll();
    w.roll_if_nonempty_and_append(3);
    wait_caught_up(&mut c, &w);
    check_all(&mut c, &w);

    // Retention deletes the two oldest segments: gone below the new start, right above it.
    w.expire(2);
    let (off, msg) = w.start_place();
    let want = format!("{off} {msg}");
    assert!(
        eventually(PATIENCE, || c.ask("start") == want),
        "start never became {want}"
    );
    check_all(&mut c, &w);
    assert!(
        eventually(PATIENCE, || index_files(&idx).len()
            == w.log().segments().len()),
        "the deleted segments' index files stay: {:?}",
        index_files(&idx)
    );
    drop(ix);
}

impl Written {
    /// Appends `n` messages to a fresh segment (the active one may have just been rolled:
    /// a roll of an empty segment would collide with it, as `Log::open` refuses).
    fn roll_if_nonempty_and_append(&mut self, n: usize) {
        if self.log().active().len > 0 {
            self.roll();
        }
        self.append(n);
    }
}

#[test]
fn a_restart_reuses_sealed_indexes_and_forgets_deleted_segments() {
    let tmp = tempdir();
    let dir = tmp.path().join("log");
    let idx = tmp.path().join("idx");
    let mut w = Written::sealed(&dir, 6, 25, 7);
    let idx_arg = idx.display().to_string();
    let (mut ix, _) = start_checked(&w, &["--index", &idx_arg]);
    ix.signal(Signal::TERM);
    assert!(ix.wait_exit(PATIENCE).is_some());
    let before: Vec<(String, std::time::SystemTime)> = index_files(&idx)
        .into_iter()
        .map(|f| {
            let m = std::fs::metadata(idx.join(&f)).unwrap().modified().unwrap();
            (f, m)
        })
        .collect();
    assert_eq!(before.len(), 7);
    // While it is down: retention, and growth.
    w.expire(2);
    w.append(4);
    let (ix, _) = start_checked(&w, &["--index", &idx_arg]);
    assert!(!ix.log.text().contains("rebuilding"), "{}", ix.log.text());
    let after = index_files(&idx);
    assert_eq!(after.len(), 5, "{after:?}");
    // The sealed segments' index files were not rewritten.
    for (f, m) in &before[2..6] {
        let now = std::fs::metadata(idx.join(f)).unwrap().modified().unwrap();
        assert_eq!(&now, m, "{f} was rewritten");
    }
}

#[test]
fn many_sealed_segments_cost_no_descriptor_each() {
    let tmp = tempdir();
    let dir = tmp.path().join("log");
    let w = Written::sealed(&dir, 60, 3, 1);
    let (ix, _) = start_checked(&w, &[]);
    let fds = ix.fd_count();
    assert!(fds < 40, "{fds} descriptors open for a log of 61 segments");
}

#[test]
fn contradictions_are_refused_at_start() {
    let tmp = tempdir();
    let dir = tmp.path().join("log");
    let mut w = Written::create(&dir);
    w.append(3);
    let run = |args: &[&str]| {
        let started = Instant::now();
        let out = std::process::Command::new(bin(BIN))
            .args(["-p", "0", "--bind", "127.0.0.1"])
            .args(args)
            .arg(&dir)
            .output()
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--framing", "nul"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("contradicts"), "{err}");
    let other = tmp.path().join("elsewhere");
    let other = other.display().to_string();
    let (code, err) = run(&["--index-dir", &other]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("segmented log"), "{err}");
    let inside = dir.join("idx").display().to_string();
    let (code, err) = run(&["--index", &inside]);
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("inside the segmented log"), "{err}");
}
