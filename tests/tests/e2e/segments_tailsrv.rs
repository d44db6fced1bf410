//! tailsrv on a segmented log (issue #19), end to end: the real binary serving a log directory
//! built with `logfile::segments` (no collator), every byte checked against the oracle, the
//! concatenation of everything ever appended.
//!
//! - followers from byte 0 and from the end, while the log grows, rolls and retention deletes
//!   old segments (one of them while a follower is in the middle of it);
//! - `gone` below the log start, the log start in `ok N LEN START`, `-N` from the global end;
//! - descriptors bounded by segments, not followers × segments;
//! - directory mode: a log is one name in `list` and one stream;
//! - a property test: random appends, rolls, deletions, server restarts and reads at random
//!   global offsets: never a wrong byte, `gone` exactly below the start. The PRNG is the
//!   test's own (seeded; the seed is printed in every failure; `SEGMENTS_SEED` replays one,
//!   `SEGMENTS_OPS` sets how many operations, 400 by default).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};

use logfile::segments::{self, Log, Marker, SegmentName};
use tests::*;

/// A segmented log written by the test, and the oracle of everything ever appended.
struct Writer {
    dir: PathBuf,
    oracle: Vec<u8>,
    messages: u64,
}

impl Writer {
    fn create(dir: &Path) -> Writer {
        Log::create(dir, &Marker::default()).unwrap();
        Writer {
            dir: dir.to_owned(),
            oracle: Vec::new(),
            messages: 0,
        }
    }

    /// A new log of `n` sealed segments of `bytes` bytes each, and an empty active one.
    fn sealed(dir: &Path, n: u64, bytes: usize) -> Writer {
        let mut w = Writer::create(dir);
        for i in 0..n {
            w.append(bytes, i);
            w.roll();
        }
        w
    }

    fn log(&self) -> Log {
        Log::open(&self.dir).unwrap()
    }

    /// Appends `n` bytes of whole lines to the active segment.
    fn append(&mut self, n: usize, seed: u64) {
        let mut data = random_bytes(n.max(1), seed);
        for b in data.iter_mut() {
            if *b == b'\n' {
                *b = b'.';
            }
        }
        *data.last_mut().unwrap() = b'\n';
        append(&self.log().active().path, &data);
        self.oracle.extend_from_slice(&data);
        self.messages += 1;
    }

    /// Seals the active segment and starts the next one (if the active one holds bytes).
    fn roll(&mut self) -> bool {
        if self.log().active().len == 0 {
            return false;
        }
        let next = SegmentName {
            base: self.oracle.len() as u64,
            first_message: self.messages,
        };
        segments::roll(&self.dir, next).unwrap();
        true
    }

    /// Retention: deletes the oldest sealed segment, if there is one.
    fn delete_oldest(&mut self) -> bool {
        let log = self.log();
        if log.segments().len() < 2 {
            return false;
        }
        segments::remove(&log.segments()[0]).unwrap();
        true
    }

    fn start(&self) -> u64 {
        self.log().start().base
    }

    fn end(&self) -> u64 {
        self.oracle.len() as u64
    }
}

fn tailsrv(path: &Path) -> Proc {
    tests::tailsrv(path).start()
}

/// Sends `line` and reads the answer line (`ok ...` or a refusal); the stream follows.
fn ask(srv: &Proc, line: &str) -> (BufReader<TcpStream>, String) {
    let mut s = srv.connect();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let mut answer = String::new();
    r.read_line(&mut answer).unwrap();
    (r, answer)
}

/// `ok N LEN [START]` as numbers.
fn ok(answer: &str) -> (u64, u64, u64) {
    let nums: Vec<u64> = answer
        .strip_prefix("ok ")
        .unwrap_or_else(|| panic!("not an ok line: {answer:?}"))
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    (nums[0], nums[1], nums.get(2).copied().unwrap_or(0))
}

/// Waits until the server has seen every change the writer made (the watcher publishes
/// growth, rolls and deletions a moment after they happen): `-0 ok` answers the writer's end
/// and start.
fn settle(srv: &Proc, w: &Writer) {
    let want = (w.end(), w.end(), w.start());
    let mut last = String::new();
    let settled = eventually(PATIENCE, || {
        last = ask(srv, "-0 ok").1;
        last.starts_with("ok ") && ok(&last) == want
    });
    assert!(settled, "the server never settled at {want:?}: {last:?}");
}

fn read_n(r: &mut BufReader<TcpStream>, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    r.read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("reading {n} bytes: {e}"));
    buf
}

#[test]
fn followers_from_zero_and_from_the_end_get_the_oracle_across_rolls_and_deletions() {
    let tmp = tempdir();
    let dir = tmp.path().join("log");
    let mut w = Writer::create(&dir);
    w.append(5000, 1);
    w.roll();
    w.append(3000, 2);
    let srv = tailsrv(&dir);
    let (mut from0, a) = ask(&srv, "0 ok");
    assert_eq!(ok(&a), (0, 8000, 0));
    let (mut from_end, a) = ask(&srv, "-0 ok");
    assert_eq!(ok(&a), (8000, 8000, 0));
    let (mut back, a) = ask(&srv, "-6000 ok");
    assert_eq!(ok(&a), (2000, 8000, 0), "-N counts back across segments");
    assert_eq!(read_n(&mut back, 6000), &w.oracle[2000..8000]);
    let mut got0 = read_n(&mut from0, 8000);
    let mut got_end = Vec::new();
    for i in 0..30u64 {
        w.append(100 + (i as usize * 997) % 20_000, 10 + i);
        if i % 3 == 0 {
            w.roll();
        }
        let end = w.end() as usize;
        got0.extend(read_n(&mut from0, end - got0.len()));
        got_end.extend(read_n(&mut from_end, end - 8000 - got_end.len()));
        // Both have everything: retention may delete what they have passed.
        if i % 4 == 1 {
            w.delete_oldest();
        }
    }
    assert_eq!(got0, w.oracle);
    assert_eq!(got_end, &w.oracle[8000..]);
    assert!(w.start() > 0, "retention deleted segments");
    // A follower in the middle of a segment that retention deletes finishes it and goes on:
    // a big sealed segment, a follower that reads nothing for now (its socket buffers fill).
    let base = w.end();
    w.roll();
    w.append(8 << 20, 99);
    w.roll();
    w.append(1000, 100);
    let (mut slow, a) = ask(&srv, &format!("{base} ok"));
    assert_eq!(ok(&a).0, base);
    let first = read_n(&mut slow, 1000);
    assert_eq!(first, &w.oracle[base as usize..base as usize + 1000]);
    while w.start() <= base {
        assert!(w.delete_oldest());
    }
    w.append(2000, 101);
    let rest = read_n(&mut slow, (w.end() - base) as usize - 1000);
    assert_eq!(rest, &w.oracle[base as usize + 1000..]);
}

#[test]
fn a_start_below_the_log_is_gone_and_ok_names_the_start() {
    let tmp = tempdir();
    let dir = tmp.path().join("log");
    let mut w = Writer::sealed(&dir, 4, 1000);
    w.append(500, 9);
    w.delete_oldest();
    w.delete_oldest();
    let start = w.start();
    assert_eq!(start, 2000);
    let srv = tailsrv(&dir);
    for line in ["0", "0 ok", "1999 ok"] {
        let (_, a) = ask(&srv, line);
        assert!(
            a.starts_with("error: gone: ") && a.contains("the log starts at byte 2000"),
            "{line}: {a:?}"
        );
    }
    let (_, a) = ask(&srv, "-0 ok");
    assert_eq!(a, "ok 4500 4500 2000\n");
    let (mut r, a) = ask(&srv, "-100000 ok");
    assert_eq!(ok(&a), (2000, 4500, 2000), "-N never goes below the start");
    assert_eq!(read_n(&mut r, 2500), &w.oracle[2000..]);
    let (mut r, a) = ask(&srv, "2000 ok");
    assert_eq!(ok(&a), (2000, 4500, 2000));
    assert_eq!(read_n(&mut r, 2500), &w.oracle[2000..]);
    // Without ` ok` the data starts at once, from the global offset.
    let mut s = srv.connect();
    s.write_all(b"3000\n").unwrap();
    assert_eq!(read_exact(&mut s, 1500), &w.oracle[3000..]);
    // `last N lines` scans back across segments.
    let (mut r, a) = ask(&srv, "last 3 lines ok");
    let (at, _, _) = ok(&a);
    assert_eq!(
        read_n(&mut r, (4500 - at) as usize),
        &w.oracle[at as usize..]
    );
    let newlines = w.oracle[at as usize..]
        .iter()
        .filter(|&&b| b == b'\n')
        .count();
    assert_eq!(newlines, 3);
}

#[test]
fn descriptors_are_bounded_by_segments_not_followers_times_segments() {
    let tmp = tempdir();
    let dir = tmp.path().join("log");
    // Segments larger than what the socket buffers take, so followers stay spread over them.
    let mut w = Writer::sealed(&dir, 12, 1536 << 10);
    w.append(100, 50);
    let srv = tailsrv(&dir);
    let idle = srv.fd_count();
    let followers = 16;
    let mut clients: Vec<_> = (0..followers).map(|_| ask(&srv, "0 ok").0).collect();
    // Each follower reads a little, so all of them sit in sealed segments.
    for c in clients.iter_mut() {
        assert_eq!(read_n(c, 1000), &w.oracle[..1000]);
    }
    let fds = srv.fd_count();
    assert!(
        fds <= idle + followers + 13,
        "{fds} descriptors with {followers} followers of 13 segments (idle: {idle})"
    );
    for c in clients.iter_mut() {
        let n = w.end() as usize - 1000;
        assert_eq!(read_n(c, n), &w.oracle[1000..]);
    }
    // All at the end: the sealed segments are closed again.
    assert!(
        eventually(PATIENCE, || srv.fd_count() <= idle + followers + 2),
        "{} descriptors once every follower is in the active segment (idle: {idle})",
        srv.fd_count()
    );
}

#[test]
fn directory_mode_serves_a_log_as_one_name() {
    let tmp = tempdir();
    let root = tmp.path();
    std::fs::write(root.join("a.log"), b"plain\n").unwrap();
    let mut w = Writer::create(&root.join("app"));
    w.append(3000, 1);
    w.roll();
    w.append(2000, 2);
    let srv = tailsrv(root);
    let (mut r, first) = ask(&srv, "list");
    let mut listing = first;
    r.read_to_string(&mut listing).unwrap();
    assert_eq!(listing, "a.log\napp\n");
    let (mut r, first) = ask(&srv, "list sizes");
    let mut listing = first;
    r.read_to_string(&mut listing).unwrap();
    assert_eq!(listing, "6 a.log\n5000 app\n");
    let (mut r, a) = ask(&srv, "stream app from byte 0 ok");
    assert_eq!(ok(&a), (0, 5000, 0));
    assert_eq!(read_n(&mut r, 5000), w.oracle);
    w.roll();
    w.append(700, 3);
    assert_eq!(read_n(&mut r, 700), &w.oracle[5000..]);
    let (mut r2, a) = ask(&srv, "stream app from byte -1000 ok");
    assert_eq!(ok(&a), (4700, 5700, 0));
    assert_eq!(read_n(&mut r2, 1000), &w.oracle[4700..]);
    w.delete_oldest();
    let (_, a) = ask(&srv, "stream app from byte 10 ok");
    assert!(a.starts_with("error: gone: \"app\": "), "{a:?}");
    let segment = format!("app/{}", SegmentName::FIRST.file_name());
    for path in [segment.as_str(), "app/tailsrv-log"] {
        let (_, a) = ask(&srv, &format!("stream {path} from byte 0 ok"));
        assert!(a.starts_with("error: not-served: "), "{path}: {a:?}");
    }
}

/// The test's random numbers: the harness's generator ([`random_bytes`]), one draw a call.
struct Rng {
    seed: u64,
    draws: u64,
}

impl Rng {
    fn next(&mut self) -> u64 {
        self.draws += 1;
        let bytes = random_bytes(8, self.seed ^ self.draws.wrapping_mul(0x9E37_79B9));
        u64::from_le_bytes(bytes.try_into().unwrap())
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[test]
fn random_appends_rolls_deletions_restarts_and_reads_never_send_a_wrong_byte() {
    let seed = std::env::var("SEGMENTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let ops: usize = std::env::var("SEGMENTS_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    eprintln!("SEGMENTS_SEED={seed}");
    let mut rng = Rng { seed, draws: 0 };
    let tmp = tempdir();
    let dir = tmp.path().join("log");
    let mut w = Writer::create(&dir);
    let mut srv = tailsrv(&dir);
    // A follower from byte 0 that must see every byte, checked at the end (it is kept ahead
    // of retention: deletions wait until it has read everything).
    let (mut whole, a) = ask(&srv, "0 ok");
    assert_eq!(ok(&a), (0, 0, 0));
    let mut whole_got = Vec::new();
    let fail = |what: String| -> ! { panic!("SEGMENTS_SEED={seed}: {what}") };
    for op in 0..ops {
        match rng.below(10) {
            0..=3 => {
                let big = rng.below(8) == 0;
                let n = 1 + rng.below(if big { 200_000 } else { 3000 });
                w.append(n as usize, rng.next());
            }
            4 | 5 => {
                w.roll();
            }
            6 => {
                let n = w.end() as usize - whole_got.len();
                whole_got.extend(read_n(&mut whole, n));
                w.delete_oldest();
            }
            7 if rng.below(8) == 0 => {
                // Restart the server: the whole-log follower reconnects where it was.
                let n = w.end() as usize - whole_got.len();
                whole_got.extend(read_n(&mut whole, n));
                drop(whole);
                drop(srv);
                srv = tailsrv(&dir);
                let at = whole_got.len() as u64;
                let (r, a) = ask(&srv, &format!("{at} ok"));
                if at < w.start() {
                    fail(format!("op {op}: the follower fell below the start"));
                }
                assert_eq!(ok(&a).0, at);
                whole = r;
            }
            _ => {
                // A read at a random global offset, below the start now and then, once the
                // server has seen the writer's last change (so `gone` must be exact).
                settle(&srv, &w);
                let end = w.end();
                let at = match rng.below(6) {
                    0 => w.start().saturating_sub(1 + rng.below(100)),
                    1 => w.start(),
                    2 => end,
                    _ => w.start() + rng.below(end - w.start() + 1),
                };
                let (mut r, a) = ask(&srv, &format!("{at} ok"));
                if at < w.start() {
                    let want = format!("the log starts at byte {}", w.start());
                    if !(a.starts_with("error: gone: ") && a.contains(&want)) {
                        fail(format!(
                            "op {op}: {at} is below the start {}: {a:?}",
                            w.start()
                        ));
                    }
                    continue;
                }
                if !a.starts_with("ok ") {
                    fail(format!("op {op}: {at} (log {}..{end}): {a:?}", w.start()));
                }
                let (n, len, start) = ok(&a);
                if (n, len, start) != (at, end, w.start()) {
                    fail(format!(
                        "op {op}: ok {n} {len} {start}, expected {at} {end} {}",
                        w.start()
                    ));
                }
                let want = (end - at).min(1 + rng.below(300_000)) as usize;
                let got = read_n(&mut r, want);
                let exp = &w.oracle[at as usize..at as usize + want];
                if got != exp {
                    let i = got.iter().zip(exp).position(|(a, b)| a != b).unwrap();
                    fail(format!(
                        "op {op}: read at {at}: byte {} differs",
                        at as usize + i
                    ));
                }
            }
        }
    }
    let n = w.end() as usize - whole_got.len();
    whole_got.extend(read_n(&mut whole, n));
    if whole_got != w.oracle {
        fail("the whole-log follower's bytes differ from the oracle".into());
    }
}
