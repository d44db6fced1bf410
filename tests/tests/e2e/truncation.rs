//! Truncation, truncate-and-regrow and rewrites, end to end: tailsrv's followers and the
//! indexer against the test's own copy of the file.
//!
//! The two exact reproductions of issue #10 come first (a file truncated and regrown past
//! its old length within microseconds). Then a property test: a random walk of appends,
//! truncations, truncate-and-regrow, in-place rewrites and new followers on small files (four
//! files, each with a real tailsrv and a real indexer on it), cut into scenarios of 2 to 6
//! operations, each ending at a quiet point where the indexer is checked. The PRNG is the
//! test's own (seeded; the seed is printed in every failure; `TRUNCATION_SEED` replays one,
//! `TRUNCATION_SCENARIOS` sets how many, 10,000 by default).
//!
//! What the property test checks, after every operation (the test waits for every follower to
//! have received everything, or to be closed, before the next one, so it knows which version
//! of the file each byte was sent from):
//! - every byte a follower receives is the byte the file holds at that offset;
//! - a follower is closed, without one more byte, when the file is truncated below what it
//!   has or the bytes just before its end are rewritten (what the watcher promises, see
//!   `shared::watch`); it is never closed by an append or by a rewrite of older bytes;
//! - the indexer's `count` and every `offset-of` equal a naive scan of the file, once it has
//!   settled, whenever no undetectable rewrite (older bytes, far from the end) has happened
//!   since the file was last truncated below it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tests::framed::{naive_starts, QueryClient};
use tests::*;

/// The indexer of `path`, its index at `index`, a cache entry every 4 messages.
fn indexer_on(path: &Path, index: &Path) -> Spawn {
    indexer(path).args(["--stride", "4", "--index"]).arg(index)
}

/// `ftruncate(fd, 0)` then one `write` of `data` on the same descriptor, microseconds apart.
fn truncate_and_regrow(path: &Path, data: &[u8]) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.set_len(0).unwrap();
    f.write_all(data).unwrap();
}

/// Reads until EOF for at most `wait`; what arrived, and whether EOF did.
fn read_until_eof(s: &mut TcpStream, wait: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return (got, false);
        };
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (got, true),
            Err(_) => return (got, false),
        }
    }
}

/// Issue #10, item 1: 1000 × A, then truncated and regrown with 2000 × B at once. The old
/// watcher only compared lengths and sent the follower 1000 B after its 1000 A.
#[test]
fn truncate_and_regrow_past_the_old_length_closes_followers() {
    let dir = tempdir();
    let path = dir.path().join("log");
    append(&path, &[b'A'; 1000]);
    let srv = tailsrv(&path).start();
    let mut old = vec![b'A'; 1000];
    for round in 0..10u8 {
        let mut c = srv.request("0");
        assert_eq!(read_exact(&mut c, old.len()), old, "round {round}");
        let new = vec![b'B' + round; old.len() * 2];
        truncate_and_regrow(&path, &new);
        let (more, eof) = read_until_eof(&mut c, Duration::from_secs(5));
        assert!(
            more.is_empty(),
            "round {round}: after {} bytes of the old file the follower got {} bytes of the \
             new one ({:?}...): a stream the file never held",
            old.len(),
            more.len(),
            String::from_utf8_lossy(&more[..more.len().min(20)])
        );
        assert!(eof, "round {round}: the follower was not closed");
        old = new;
    }
    // The log line is read by another thread: wait for it rather than race it.
    assert!(srv
        .log
        .wait_for("file was truncated or rewritten", PATIENCE)
        .is_some());
}

/// Issue #10, item 2: 2,000 ten-byte lines, then truncated and 3,001 seven-byte lines at
/// once. The old indexer answered `count` 2144 and wrong offsets forever. Whether the
/// watcher catches the file while it is short is a race, so the same shape is repeated
/// (the old code fails within a few rounds).
#[test]
fn indexer_rebuilds_after_truncate_and_regrow() {
    let dir = tempdir();
    let path = dir.path().join("log");
    let lines = |n: usize, width: usize, tag: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|i| format!("{tag}{:0w$}\n", i, w = width - 2).into_bytes())
            .collect()
    };
    append(&path, &lines(2_000, 10, 0));
    let p = indexer_on(&path, &dir.path().join("log.idx")).start();
    let mut q = QueryClient::new(&p);
    q.wait_count("count", 2_000);
    for round in 0..10 {
        // Ten-byte and seven-byte lines in turn, each time longer than the file was.
        let (count, width) = match round % 2 {
            0 => (3_001 + 1_500 * round, 7),
            _ => (2_000 + 1_500 * round, 10),
        };
        let new = lines(count, width, round % 10);
        truncate_and_regrow(&path, &new);
        let (starts, _) = naive_starts("newline", &new);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = String::new();
        while Instant::now() < deadline {
            last = q.ask("count");
            if last == count.to_string() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(last, count.to_string(), "round {round}: count");
        let queries: Vec<String> = (0..=count).map(|n| format!("offset-of {n}")).collect();
        let expected: Vec<String> = starts
            .iter()
            .chain(std::iter::once(&(new.len() as u64)))
            .map(|o| o.to_string())
            .collect();
        assert_eq!(q.ask_all(&queries), expected, "round {round}: offsets");
    }
}

// ---------------------------------------------------------------------------------------
// The property test.

/// Log-like bytes: printable, a newline about every ten bytes.
fn log_bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    (0..n)
        .map(|_| match rng.below(10) {
            0 => b'\n',
            _ => b'a' + rng.below(26) as u8,
        })
        .collect()
}

/// A byte other than `old`.
fn other_than(rng: &mut Rng, old: u8) -> u8 {
    old ^ (1 + rng.below(255) as u8)
}

/// Bytes before the end that the watcher is allowed to check (`shared::watch::FINGERPRINT`
/// is 32; a rewrite that stays clear of the last 64 bytes is certainly not detected, one that
/// changes every byte up to the end certainly is).
const TAIL: u64 = 64;

/// One tailsrv follower and what the test knows about it.
struct Follower {
    sock: TcpStream,
    /// The offset of the next byte it will receive.
    pos: u64,
    /// Whether it has received the file's last byte: then the watcher has taken in the file
    /// as it is (it published this length after its last look at the bytes before it), and
    /// the follower must be closed by a truncation or a rewrite of those bytes. A follower
    /// placed at the end that has received nothing may have been placed before the watcher
    /// saw the file's last change; it may or may not be closed, but what it receives must
    /// still be the file's.
    synced: bool,
}

/// One file with a tailsrv and an indexer on it, and the test's copy of the file.
struct World {
    path: PathBuf,
    srv: Proc,
    idx: Proc,
    q: QueryClient,
    file: Vec<u8>,
    followers: Vec<Follower>,
    /// The earliest offset rewritten in place (undetectably) since the file was last
    /// truncated at or below it: the indexer may count wrong until then.
    dirty_from: Option<u64>,
    /// The last operations, for failure messages.
    last_op: String,
    /// For the report: operations done, indexer checks, followers closed as required.
    ops: u64,
    checks: u64,
    closed: u64,
}

impl Drop for World {
    /// A failing scenario shows the end of both servers' logs (an exit, an error line).
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (name, p) in [("tailsrv", &self.srv), ("indexer", &self.idx)] {
                let text = p.log.text();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                eprintln!("--- {name}, last lines:");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// What a random operation did, as far as followers at the end of the file are concerned.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Effect {
    /// The file only grew: followers receive the new bytes.
    Grew,
    /// Bytes far from the end were rewritten: not detected, followers stay.
    Undetected,
    /// Truncated below the end, or every byte up to the end rewritten: followers are closed.
    Closes,
}

impl World {
    fn new(dir: &Path, n: usize) -> World {
        let path = dir.join(format!("log{n}"));
        std::fs::write(&path, b"").unwrap();
        // Errors only: tens of thousands of truncations would otherwise be as many warnings.
        let srv = tailsrv(&path).arg("-qq").start();
        let idx = indexer_on(&path, &dir.join(format!("log{n}.idx")))
            .arg("-qq")
            .start();
        let q = QueryClient::new(&idx);
        World {
            path,
            srv,
            idx,
            q,
            file: Vec::new(),
            followers: Vec::new(),
            dirty_from: None,
            last_op: String::new(),
            ops: 0,
            checks: 0,
            closed: 0,
        }
    }

    fn note(&mut self, op: String) {
        // Keep the last 20 or so.
        if self.last_op.matches("; ").count() >= 20 {
            let cut = self.last_op.find("; ").map_or(0, |i| i + 2);
            self.last_op.drain(..cut);
        }
        self.last_op.push_str(&op);
        self.last_op.push_str("; ");
    }

    fn handle(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .unwrap()
    }

    /// Connects a follower at `start` and lets it catch up.
    fn connect(&mut self, start: u64, ctx: &str) {
        let sock = self.srv.request(start.to_string());
        self.followers.push(Follower {
            sock,
            pos: start,
            synced: false,
        });
        let i = self.followers.len() - 1;
        assert!(
            self.drain(i, ctx),
            "{ctx}: a new follower at {start} of {} was closed ({})",
            self.file.len(),
            self.last_op
        );
    }

    /// Reads follower `i` until it has everything the file holds (true) or is closed
    /// (false). Every byte must be the file's byte at that offset.
    fn drain(&mut self, i: usize, ctx: &str) -> bool {
        let f = &mut self.followers[i];
        let end = self.file.len() as u64;
        let mut buf = [0u8; 4096];
        f.sock
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        while f.pos < end {
            let n = match f.sock.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return false,
                Err(e) => panic!("{ctx}: follower at {} of {end} stalled: {e}", f.pos),
            };
            let at = f.pos as usize;
            assert!(
                at + n <= self.file.len(),
                "{ctx}: follower got bytes {at}..{} of a {end}-byte file",
                at + n
            );
            assert_eq!(
                &buf[..n],
                &self.file[at..at + n],
                "{ctx}: follower got bytes {at}..{} that the file does not hold",
                at + n
            );
            f.pos += n as u64;
            f.synced = true;
        }
        true
    }

    /// After an operation: every follower catches up (or, for `Closes`, is closed without
    /// one more byte); then, if the indexer can be held to it, it must settle on the naive
    /// scan's answers.
    fn settle(&mut self, effect: Effect, ctx: &str) {
        match effect {
            Effect::Grew => {
                for i in 0..self.followers.len() {
                    assert!(
                        self.drain(i, ctx),
                        "{ctx}: a follower was closed by an append ({})",
                        self.last_op
                    );
                }
            }
            Effect::Undetected => {}
            Effect::Closes => {
                let (synced, others): (Vec<_>, Vec<_>) = std::mem::take(&mut self.followers)
                    .into_iter()
                    .partition(|f| f.synced);
                let end = self.file.len() as u64;
                // Followers that had nothing yet: kept if they can be told apart from one
                // that is about to be closed (they receive bytes); otherwise let go.
                for f in others.into_iter().filter(|f| f.pos < end) {
                    self.followers.push(f);
                    let i = self.followers.len() - 1;
                    if !self.drain(i, ctx) {
                        self.followers.pop();
                    }
                }
                for mut f in synced {
                    let (more, eof) = read_until_eof(&mut f.sock, Duration::from_secs(10));
                    assert!(
                        more.is_empty(),
                        "{ctx}: a follower at {} got {} more bytes after a truncation or \
                         rewrite of the bytes before its position ({})",
                        f.pos,
                        more.len(),
                        self.last_op
                    );
                    assert!(eof, "{ctx}: a follower at {} was not closed", f.pos);
                    self.closed += 1;
                }
            }
        }
    }

    /// The indexer's answers equal a naive scan, after at most a few seconds of settling.
    fn check_indexer(&mut self, ctx: &str) {
        let (starts, end) = naive_starts("newline", &self.file);
        let mut queries = vec!["count".to_string()];
        let mut expected = vec![starts.len().to_string()];
        for (n, s) in starts.iter().chain(std::iter::once(&end)).enumerate() {
            queries.push(format!("offset-of {n}"));
            expected.push(s.to_string());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut pause = Duration::from_micros(100);
        loop {
            if let Some(status) = self.idx.wait_exit(Duration::ZERO) {
                panic!(
                    "{ctx}: the indexer exited ({status}):\n{}",
                    self.idx.log.text()
                );
            }
            let answers = self.q.ask_all(&queries);
            if answers == expected {
                break;
            }
            if Instant::now() > deadline {
                let wrong = answers
                    .iter()
                    .zip(&expected)
                    .zip(&queries)
                    .find(|((a, e), _)| a != e)
                    .map(|((a, e), q)| format!("{q:?} answered {a:?}, expected {e:?}"));
                panic!(
                    "{ctx}: the indexer did not settle on the naive scan of the {}-byte \
                     file: {}\nindexer log:\n{}",
                    self.file.len(),
                    wrong.unwrap_or_default(),
                    self.idx.log.text()
                );
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
        self.checks += 1;
    }

    /// One random operation (or a new follower), checked.
    fn step(&mut self, rng: &mut Rng, ctx: &str) {
        self.ops += 1;
        let len = self.file.len() as u64;
        let choice = if len == 0 { 0 } else { rng.below(12) };
        let effect = match choice {
            // Append, as a logger would.
            0..=3 => {
                let n = 1 + rng.below(120) as usize;
                let data = log_bytes(rng, n);
                self.note(format!("appended {n} at {len}"));
                append(&self.path, &data);
                self.file.extend_from_slice(&data);
                Effect::Grew
            }
            // A new follower, anywhere in the file.
            4 | 5 => {
                let start = rng.below(len + 1);
                self.note(format!("follower at {start}"));
                self.connect(start, ctx);
                return;
            }
            // Truncated, maybe regrown at once (past the old length or not), on one
            // descriptor; every regrown byte differs from the old one at its offset.
            6..=8 => {
                self.ensure_witness(ctx);
                // Half the time below an undetected rewrite, if there is one, so that the
                // indexer can be held to the naive scan again.
                let to = match self.dirty_from {
                    Some(d) if rng.below(2) == 0 => rng.below(d.min(len - 1) + 1),
                    _ => rng.below(len),
                };
                let regrow = match rng.below(3) {
                    0 => 0,
                    1 => rng.below(len - to + 1),
                    _ => len - to + 1 + rng.below(200),
                } as usize;
                let mut data = log_bytes(rng, regrow);
                for (i, b) in data.iter_mut().enumerate() {
                    if let Some(&old) = self.file.get(to as usize + i) {
                        if *b == old {
                            *b = other_than(rng, old);
                        }
                    }
                }
                self.note(format!("truncated {len} -> {to}, regrown by {regrow}"));
                let f = self.handle();
                f.set_len(to).unwrap();
                f.write_all_at(&data, to).unwrap();
                self.file.truncate(to as usize);
                self.file.extend_from_slice(&data);
                if self.dirty_from.is_some_and(|d| to <= d) {
                    self.dirty_from = None;
                }
                Effect::Closes
            }
            // The end rewritten in place: every byte from somewhere in the last 64 up to the
            // end changes (and maybe more is written after it).
            9 | 10 => {
                self.ensure_witness(ctx);
                let from = len - 1 - rng.below(len.min(TAIL));
                let mut data: Vec<u8> = self.file[from as usize..]
                    .iter()
                    .map(|&b| other_than(rng, b))
                    .collect();
                let more = rng.below(50) as usize;
                data.extend(log_bytes(rng, more));
                self.note(format!("rewrote {from}..{len} of {len}, + {more}"));
                self.handle().write_all_at(&data, from).unwrap();
                self.file.truncate(from as usize);
                self.file.extend_from_slice(&data);
                Effect::Closes
            }
            // Older bytes rewritten in place, clear of the end: not detected (by design).
            _ => {
                if len <= TAIL + 1 {
                    return;
                }
                // Only certain to go unnoticed if the watcher has taken in the file as it is
                // (a lagging watcher may still be looking at bytes this rewrites).
                self.ensure_witness(ctx);
                let from = rng.below(len - TAIL);
                let n = 1 + rng.below((len - TAIL - from).min(20));
                let data = log_bytes(rng, n as usize);
                self.note(format!("rewrote {from}..{} of {len}", from + n));
                self.handle().write_all_at(&data, from).unwrap();
                self.file[from as usize..(from + n) as usize].copy_from_slice(&data);
                self.dirty_from = Some(self.dirty_from.map_or(from, |d| d.min(from)));
                Effect::Undetected
            }
        };
        self.settle(effect, ctx);
    }

    /// Before a truncation or a rewrite: at least one follower that has received the file's
    /// last byte, so that the watcher is known to have taken in the file as it is (and, for
    /// a change that closes followers, the test sees it take the change in before going on).
    fn ensure_witness(&mut self, ctx: &str) {
        if !self.followers.iter().any(|f| f.synced) {
            let len = self.file.len() as u64;
            self.note(format!("witness at {}", len.saturating_sub(1)));
            self.connect(len.saturating_sub(1), ctx);
        }
    }
}

#[test]
fn random_appends_truncations_and_rewrites() {
    let scenarios: u64 = std::env::var("TRUNCATION_SCENARIOS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let seed = seed("TRUNCATION_SEED");
    println!("seed {seed} (TRUNCATION_SEED={seed} replays it), {scenarios} scenarios");
    let dir = tempdir();
    // Several files, each with its own tailsrv and indexer, driven by a thread each: the
    // operations wait on the servers far more than they compute.
    let worlds = 4;
    let started = Instant::now();
    let threads: Vec<_> = (0..worlds)
        .map(|w| {
            let dir = dir.path().to_owned();
            let share = scenarios / worlds + u64::from(w < scenarios % worlds);
            std::thread::spawn(move || {
                let mut world = World::new(&dir, w as usize);
                let mut rng = Rng::new(seed ^ (w + 1).wrapping_mul(0xA076_1D64_78BD_642F));
                for s in 0..share {
                    let ctx = format!("seed {seed}, file {w}, scenario {s}");
                    let steps = 2 + rng.below(5);
                    for k in 0..steps {
                        world.step(&mut rng, &format!("{ctx}, step {k}"));
                    }
                    // The quiet point: the indexer must settle on the naive scan.
                    if world.dirty_from.is_none() {
                        world.check_indexer(&format!("{ctx}, end ({})", world.last_op));
                    }
                }
                assert!(world.srv.wait_exit(Duration::ZERO).is_none());
                assert!(world.idx.wait_exit(Duration::ZERO).is_none());
                (world.ops, world.checks, world.closed)
            })
        })
        .collect();
    let (mut ops, mut checks, mut closed) = (0, 0, 0);
    for t in threads {
        let (o, c, k) = t.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
        ops += o;
        checks += c;
        closed += k;
    }
    println!(
        "{scenarios} scenarios, {ops} operations, {checks} indexer checks, {closed} followers \
         closed as required, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------
// Unreadable now, readable later (issue #10, item 5).

/// Starts tailsrv unable to override file permissions, even as root (its bounding set
/// loses CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH on a thread of its own, which the child
/// inherits: the rest of the test, and the tests beside it in this process, keep them), so
/// that a file with mode 000 cannot be opened by it.
fn without_permission_override(server: Spawn) -> Proc {
    std::thread::spawn(move || {
        use rustix::thread::{remove_capability_from_bounding_set, CapabilitySet};
        if rustix::process::geteuid().is_root() {
            for cap in [CapabilitySet::DAC_OVERRIDE, CapabilitySet::DAC_READ_SEARCH] {
                remove_capability_from_bounding_set(cap)
                    .expect("dropping a capability from the bounding set (needs CAP_SETPCAP)");
            }
        }
        server.start()
    })
    .join()
    .unwrap()
}

#[test]
fn unreadable_file_is_retried_and_waiting_clients_are_told() {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = tempdir();
    let path = dir.path().join("log");
    // Absent at start: the server waits for it.
    let srv = without_permission_override(tailsrv(&path).args(["--header-timeout", "1"]));
    // Created unreadable (mode 000): the server cannot open it.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(&path)
        .unwrap();
    f.write_all(b"hello\n").unwrap();
    assert!(srv.log.wait_for("Permission denied", PATIENCE).is_some());
    // A client waiting past the header timeout is told why, rather than left hanging.
    let started = Instant::now();
    let mut c = srv.request("0");
    assert_eq!(read_text(&mut c), "error: unreadable: permission denied\n");
    assert!(started.elapsed() >= Duration::from_millis(900));
    // More attribute changes that leave it unreadable: no new warning.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o200)).unwrap();
    // A client that is waiting when the file becomes readable is served.
    let mut waiting = srv.request("0");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(read_exact(&mut waiting, 6), b"hello\n");
    assert!(srv
        .log
        .wait_for("the file can be opened now", PATIENCE)
        .is_some());
    assert_eq!(
        srv.log.text().matches("Permission denied").count(),
        1,
        "one warning, not one per retry:\n{}",
        srv.log.text()
    );
    // And so is everyone after, with what is appended.
    let mut later = srv.request("0");
    assert_eq!(read_exact(&mut later, 6), b"hello\n");
    f.write_all(b"world\n").unwrap();
    assert_eq!(read_exact(&mut later, 6), b"world\n");
    assert_eq!(read_exact(&mut waiting, 6), b"world\n");
}

// ---------------------------------------------------------------------------------------
// The index file's format change (issue #10, item 7).

/// CRC-32 (IEEE), bit by bit: the test's own, to write a header the old way.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// Stops `p` with SIGTERM and waits for it.
fn stop(mut p: Proc) {
    p.signal(rustix::process::Signal::TERM);
    assert!(p.wait_exit(PATIENCE).is_some());
}

#[test]
fn old_format_and_damaged_magic_are_rebuilt() {
    let dir = tempdir();
    let path = dir.path().join("log");
    let idx = dir.path().join("log.idx");
    let data: Vec<u8> = (0..300)
        .flat_map(|i| format!("line {i}\n").into_bytes())
        .collect();
    append(&path, &data);
    let (starts, end) = naive_starts("newline", &data);
    let queries: Vec<String> = std::iter::once("count".to_string())
        .chain((0..=starts.len()).map(|n| format!("offset-of {n}")))
        .collect();
    let expected: Vec<String> = std::iter::once(starts.len().to_string())
        .chain(starts.iter().chain([&end]).map(|o| o.to_string()))
        .collect();

    // A version 1 index (it named the device), with entries: rebuilt, not refused.
    let mut v1 = vec![0u8; 64];
    v1[..8].copy_from_slice(b"tsrvidx\0");
    v1[8..12].copy_from_slice(&1u32.to_le_bytes());
    v1[16..20].copy_from_slice(&4u32.to_le_bytes());
    let crc = crc32(&v1[..56]);
    v1[56..60].copy_from_slice(&crc.to_le_bytes());
    v1.extend_from_slice(&[0x5a; 12 * 10]);
    std::fs::write(&idx, &v1).unwrap();
    let p = indexer_on(&path, &idx).start();
    assert!(p.log.wait_for("format version 1", PATIENCE).is_some());
    let mut q = QueryClient::new(&p);
    q.wait_count("count", starts.len() as u64);
    assert_eq!(q.ask_all(&queries), expected);
    stop(p);
    let written = std::fs::read(&idx).unwrap();
    assert_eq!(
        &written[8..12],
        &2u32.to_le_bytes(),
        "rewritten as version 2"
    );
    assert_eq!((written.len() - 64) % 12, 0);

    // A restart resumes from it (the log is known by inode and first bytes).
    let p = indexer_on(&path, &idx).start();
    assert!(p
        .log
        .wait_for("resuming from the index", PATIENCE)
        .is_some());
    stop(p);

    // One bit of the magic flipped: still clearly ours (name, size, header checksum), so
    // rebuilt with a word about it rather than refused.
    let mut damaged = written.clone();
    damaged[2] ^= 0x04;
    std::fs::write(&idx, &damaged).unwrap();
    let p = indexer_on(&path, &idx).start();
    assert!(p.log.wait_for("magic number are wrong", PATIENCE).is_some());
    let mut q = QueryClient::new(&p);
    q.wait_count("count", starts.len() as u64);
    assert_eq!(q.ask_all(&queries), expected);
}

/// Issue #25 item 8: followers in the middle of a large backlog when the file is truncated
/// to zero and at once regrown with other bytes. tailsrv checked the epoch only between
/// backlogs, so a follower parked on a full socket in the middle of one went on with the
/// new file's bytes at its offset after the old ones (62 of 100 in the report), still open
/// seconds later. Now the epoch is checked before every `sendfile`.
///
/// 100 followers of a 64 MiB file read slowly (so each is mid-backlog, its socket full),
/// then stop reading for the change: that leaves out the race the watcher documents (a
/// `sendfile` in the microseconds between the regrow and the watcher's look), and what is
/// checked is that nothing more is sent once the watcher has seen the change. Then they read
/// as fast as they can. Every follower must be closed, and every byte it got must be the
/// old file's byte at that offset.
#[test]
fn truncate_and_regrow_closes_followers_in_the_middle_of_a_backlog() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    const SIZE: usize = 64 << 20;
    const FOLLOWERS: usize = 100;
    const BEFORE: u64 = 1 << 20;
    let dir = tempdir();
    let path = dir.path().join("log");
    let old = Arc::new(random_bytes(SIZE, 25));
    append(&path, &old);
    let srv = tailsrv(&path).start();
    let paused = Arc::new(AtomicBool::new(false));
    let slow = Arc::new(AtomicBool::new(true));
    let received: Arc<Vec<AtomicU64>> =
        Arc::new((0..FOLLOWERS).map(|_| AtomicU64::new(0)).collect());
    let deadline = Instant::now() + Duration::from_secs(25);
    let followers: Vec<_> = (0..FOLLOWERS)
        .map(|i| {
            let mut c = srv.request("0");
            let (old, paused, slow, received) =
                (old.clone(), paused.clone(), slow.clone(), received.clone());
            std::thread::spawn(move || -> Result<u64, String> {
                let mut buf = vec![0u8; 16 << 10];
                let mut got = 0usize;
                c.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                loop {
                    if Instant::now() > deadline {
                        return Err(format!("follower {i}: still open after {got} bytes"));
                    }
                    if paused.load(Ordering::Acquire) {
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                    let n = match c.read(&mut buf) {
                        Ok(0) => return Ok(got as u64),
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                            return Ok(got as u64)
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) =>
                        {
                            continue
                        }
                        Err(e) => return Err(format!("follower {i}: {e}")),
                    };
                    if got + n > old.len() || buf[..n] != old[got..got + n] {
                        let at = (0..n)
                            .find(|&k| got + k >= old.len() || buf[k] != old[got + k])
                            .unwrap();
                        return Err(format!(
                            "follower {i}: byte {} is not the old file's (a stream the file \
                             never held: the new generation spliced after the old)",
                            got + at
                        ));
                    }
                    got += n;
                    received[i].store(got as u64, Ordering::Release);
                    if slow.load(Ordering::Acquire) {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(15), || received
            .iter()
            .all(|r| r.load(Ordering::Acquire) >= BEFORE)),
        "followers did not all receive {BEFORE} bytes"
    );
    paused.store(true, Ordering::Release);
    // Every reader is parked now (its last read done), and tailsrv with it on a full socket.
    std::thread::sleep(Duration::from_millis(50));
    let at_change: Vec<u64> = received.iter().map(|r| r.load(Ordering::Acquire)).collect();
    assert!(
        at_change.iter().all(|&n| n < SIZE as u64 / 2),
        "a follower was not in the middle of its backlog: {at_change:?}"
    );
    truncate_and_regrow(&path, &random_bytes(SIZE, 26));
    assert!(srv.log.wait_for("file was truncated", PATIENCE).is_some());
    slow.store(false, Ordering::Release);
    paused.store(false, Ordering::Release);
    let mut failures = Vec::new();
    let mut closed = 0;
    for f in followers {
        match f.join().unwrap() {
            Ok(_) => closed += 1,
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "{closed}/{FOLLOWERS} followers closed cleanly; {} failed, first: {}",
        failures.len(),
        failures.first().map_or("", |s| s.as_str())
    );
}
