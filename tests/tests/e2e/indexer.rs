//! tailsrv-indexer end to end: the real binary, real TCP on 127.0.0.1, logs in a temp directory.
//!
//! Ground truth never comes from the indexer's code: messages are encoded here by this file's
//! own encoders (newline, nul, u32be, LEB128 varint), and expected offsets come from a naive
//! byte-by-byte scan of what is actually in the log file.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustix::process::Signal;
use tests::framed;
use tests::*;

const BIN: &str = "tailsrv-indexer";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Framing {
    Newline,
    Nul,
    U32Be,
    Varint,
}

const FRAMINGS: [Framing; 4] = [
    Framing::Newline,
    Framing::Nul,
    Framing::U32Be,
    Framing::Varint,
];

impl Framing {
    fn flag(self) -> &'static str {
        match self {
            Framing::Newline => "newline",
            Framing::Nul => "nul",
            Framing::U32Be => "u32be",
            Framing::Varint => "varint",
        }
    }
}

/// A message length from 0 bytes to over 64 KiB, mostly small.
fn message_len(rng: &mut Rng) -> usize {
    match rng.below(100) {
        0..=79 => rng.below(200) as usize,
        80..=95 => 200 + rng.below(5_000) as usize,
        _ => 60_000 + rng.below(10_000) as usize,
    }
}

/// Encodes one message, with this test's own encoders.
fn encode(framing: Framing, payload: &[u8], out: &mut Vec<u8>) {
    framed::encode(framing.flag(), payload, out)
}

fn random_stream(framing: Framing, count: usize, rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..count {
        let len = message_len(rng);
        let payload = rng.bytes(len);
        encode(framing, &payload, &mut out);
    }
    out
}

/// Naive scan of a byte stream: the start of every complete message, and the end of the last
/// complete one (where the next message starts).
fn naive_starts(framing: Framing, data: &[u8]) -> (Vec<u64>, u64) {
    framed::naive_starts(framing.flag(), data)
}

type Client = LineClient;

fn start(path: &Path, framing: Framing, extra: &[&str]) -> Proc {
    indexer(path)
        .args(["--framing", framing.flag()])
        .args(extra)
        .start()
}

/// Checks every answer the indexer can give for the log at `path` against a naive scan:
/// `count`, `offset-of` every message (and one past), `message-at` the first and last byte of
/// every message and a sample of bytes between, and the errors just past the end.
fn check_all(c: &mut Client, framing: Framing, path: &Path, rng: &mut Rng) {
    let data = fs::read(path).unwrap();
    let (starts, end) = naive_starts(framing, &data);
    let n = starts.len() as u64;
    c.wait_count("count", n);
    let mut qs: Vec<String> = (0..=n).map(|i| format!("offset-of {i}")).collect();
    let mut want: Vec<String> = starts.iter().map(u64::to_string).collect();
    want.push(end.to_string());
    for (i, &s) in starts.iter().enumerate() {
        let next = starts.get(i + 1).copied().unwrap_or(end);
        for b in [s, next - 1, s + rng.below(next - s)] {
            qs.push(format!("message-at {b}"));
            want.push(i.to_string());
        }
    }
    let answers = c.ask_all(&qs);
    for ((q, a), w) in qs.iter().zip(&answers).zip(&want) {
        assert_eq!(a, w, "{framing:?}: {q}");
    }
    assert!(c
        .ask(&format!("offset-of {}", n + 1))
        .starts_with("error: "));
    assert!(c.ask(&format!("message-at {end}")).starts_with("error: "));
}

/// Appends `data` in random pieces (cut anywhere, inside length prefixes too), checking now
/// and then, while it is half written, that only complete messages count.
fn append_in_pieces(c: &mut Client, framing: Framing, path: &Path, data: &[u8], rng: &mut Rng) {
    let mut f = OpenOptions::new().append(true).open(path).unwrap();
    let already = fs::metadata(path).unwrap().len() as usize;
    let mut written = Vec::from(&fs::read(path).unwrap()[..already]);
    let mut at = 0;
    let mut pieces = 0;
    while at < data.len() {
        let size = match rng.below(4) {
            0 => 1 + rng.below(5) as usize, // small: lands inside prefixes
            1 => 1 + rng.below(200) as usize,
            _ => 1 + rng.below(20_000) as usize,
        };
        let to = (at + size).min(data.len());
        f.write_all(&data[at..to]).unwrap();
        written.extend_from_slice(&data[at..to]);
        at = to;
        pieces += 1;
        if pieces % 25 == 0 {
            let (starts, end) = naive_starts(framing, &written);
            c.wait_count("count", starts.len() as u64);
            assert_eq!(c.number(&format!("offset-of {}", starts.len())), end);
        }
    }
}

#[test]
fn every_framing_matches_a_naive_scan_while_written_in_pieces() {
    // Lookups answered from decoded strides (the cache) and by scanning the log (no cache).
    let runs = FRAMINGS
        .into_iter()
        .flat_map(|f| [(f, true), (f, false)])
        .enumerate();
    for (i, (framing, cached)) in runs {
        let dir = tempdir();
        let path = dir.path().join("log");
        let mut rng = Rng::new(100 + i as u64);
        // Some messages before the indexer starts (cold build), the rest while it runs.
        fs::write(&path, random_stream(framing, 150, &mut rng)).unwrap();
        // A small stride so lookups cross many entries; the default one on the first framing.
        let mut args = if i == 0 {
            vec![]
        } else {
            vec!["--stride", "5"]
        };
        if !cached {
            args.extend(["--cache-mib", "0"]);
        }
        let p = start(&path, framing, &args);
        let mut c = Client::new(&p);
        check_all(&mut c, framing, &path, &mut rng);
        let more = random_stream(framing, 250, &mut rng);
        append_in_pieces(&mut c, framing, &path, &more, &mut rng);
        check_all(&mut c, framing, &path, &mut rng);
    }
}

/// A newline or NUL log far behind its index (32 MiB or more) is split on several threads,
/// each taking segments in turn: every answer must still match a naive scan, at the seams
/// between the threads' segments too, with messages longer than a segment, a partial last
/// message, and a restart that resumes from that index.
#[test]
fn big_cold_build_split_on_several_threads() {
    for (framing, delim) in [(Framing::Newline, b'\n'), (Framing::Nul, 0u8)] {
        let dir = tempdir();
        let path = dir.path().join("log");
        let mut rng = Rng::new(77);
        let mut data = Vec::with_capacity(41 << 20);
        while data.len() < 40 << 20 {
            let len = match rng.below(3000) {
                0 => 300_000,
                _ => rng.below(400) as usize,
            };
            data.resize(data.len() + len, b'x');
            data.push(delim);
        }
        data.extend_from_slice(b"partial");
        fs::write(&path, &data).unwrap();
        let (starts, end) = naive_starts(framing, &data);
        let n = starts.len() as u64;
        for run in 0..2 {
            // The first run builds the index cold, the second resumes from it.
            let p = start(&path, framing, &["--scan-threads", "3"]);
            let mut c = Client::new(&p);
            c.wait_count("count", n);
            let mut qs = Vec::new();
            let mut want = Vec::new();
            let picks = (0..200)
                .chain(n - 200..n)
                .chain((0..3000).map(|_| rng.below(n)));
            for i in picks {
                let s = starts[i as usize];
                qs.push(format!("offset-of {i}"));
                want.push(s.to_string());
                qs.push(format!("message-at {s}"));
                want.push(i.to_string());
            }
            qs.push(format!("offset-of {n}"));
            want.push(end.to_string());
            assert_eq!(c.ask_all(&qs), want, "{framing:?}, run {run}");
        }
    }
}

#[test]
fn pipelined_queries_and_index_size() {
    let dir = tempdir();
    let path = dir.path().join("log");
    // 20,000 messages of 100 bytes (99 + newline).
    let line = [b'a'; 99];
    let mut data = Vec::new();
    for _ in 0..20_000 {
        encode(Framing::Newline, &line, &mut data);
    }
    fs::write(&path, &data).unwrap();
    let p = start(&path, Framing::Newline, &[]);
    let mut c = Client::new(&p);
    c.wait_count("count", 20_000);
    let qs: Vec<String> = (0..20_000).map(|i| format!("offset-of {i}")).collect();
    let answers = c.ask_all(&qs);
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a, &(i * 100).to_string());
    }
    let idx = fs::metadata(dir.path().join("log.idx")).unwrap().len();
    assert!(
        idx as f64 / 20_000.0 <= 0.25,
        "index is {idx} bytes for 20,000 messages"
    );
}

#[test]
fn restart_resumes_from_the_index() {
    let dir = tempdir();
    let path = dir.path().join("log");
    let mut rng = Rng::new(7);
    fs::write(&path, random_stream(Framing::Varint, 2_000, &mut rng)).unwrap();
    let data = fs::read(&path).unwrap();
    let (starts, _) = naive_starts(Framing::Varint, &data);
    {
        let mut p = start(&path, Framing::Varint, &[]);
        Client::new(&p).wait_count("count", 2_000);
        p.signal(Signal::TERM);
        assert!(p.wait_exit(PATIENCE).is_some());
    }
    let more = random_stream(Framing::Varint, 100, &mut rng);
    append(&path, &more);
    let p = start(&path, Framing::Varint, &[]);
    // It resumes at the last entry: message 1984 (= 31 * 64), not at byte 0.
    let resumed = format!(
        "resuming from the index at byte {} (message 1984)",
        starts[1984]
    );
    assert!(
        p.log.wait_for(&resumed, PATIENCE).is_some(),
        "expected {resumed:?} in:\n{}",
        p.log.text()
    );
    assert!(!p.log.text().contains("from the start"), "{}", p.log.text());
    let mut c = Client::new(&p);
    check_all(&mut c, Framing::Varint, &path, &mut rng);
}

#[test]
fn kill_9_while_a_writer_appends() {
    let dir = tempdir();
    let path = dir.path().join("log");
    fs::write(&path, b"").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rng = Rng::new(99);
            let mut f = OpenOptions::new().append(true).open(&path).unwrap();
            let mut written = 0;
            // Bounded, in case the test fails before it says stop.
            while !stop.load(Ordering::Relaxed) && written < 200 << 20 {
                let data = random_stream(Framing::U32Be, 20, &mut rng);
                let mut at = 0;
                while at < data.len() {
                    let to = (at + 1 + rng.below(3_000) as usize).min(data.len());
                    f.write_all(&data[at..to]).unwrap();
                    at = to;
                }
                written += data.len();
                // Pace the writer so the log grows across the kills rather than all at once.
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let mut rng = Rng::new(5);
    for round in 0..4 {
        let p = start(&path, Framing::U32Be, &["--stride", "8"]);
        if round > 0 {
            assert!(
                p.log
                    .wait_for("resuming from the index at byte", PATIENCE)
                    .is_some(),
                "round {round} did not resume:\n{}",
                p.log.text()
            );
        }
        let mut c = Client::new(&p);
        // Let it index a while, then kill it mid-flight.
        let target = 50 + rng.below(200) + c.parsed("count").unwrap_or(0);
        assert!(eventually(PATIENCE, || c
            .parsed("count")
            .is_some_and(|n| n > target)));
        p.signal(Signal::KILL);
        drop(p);
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let p = start(&path, Framing::U32Be, &["--stride", "8"]);
    let mut c = Client::new(&p);
    check_all(&mut c, Framing::U32Be, &path, &mut rng);
}

/// Builds an index of `count` newline messages at `path`, and stops the indexer.
fn indexed_log(path: &Path, count: usize, seed: u64) -> PathBuf {
    let mut rng = Rng::new(seed);
    fs::write(path, random_stream(Framing::Newline, count, &mut rng)).unwrap();
    let mut p = start(path, Framing::Newline, &["--stride", "4"]);
    Client::new(&p).wait_count("count", count as u64);
    p.signal(Signal::TERM);
    assert!(p.wait_exit(PATIENCE).is_some());
    let mut idx = path.as_os_str().to_owned();
    idx.push(".idx");
    PathBuf::from(idx)
}

#[test]
fn torn_index_tail_is_repaired() {
    let dir = tempdir();
    let path = dir.path().join("log");
    let idx = indexed_log(&path, 300, 11);
    let len = fs::metadata(&idx).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&idx)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let p = start(&path, Framing::Newline, &["--stride", "4"]);
    assert!(p.log.wait_for("torn or corrupt tail", PATIENCE).is_some());
    assert!(p
        .log
        .wait_for("resuming from the index", PATIENCE)
        .is_some());
    let mut c = Client::new(&p);
    check_all(&mut c, Framing::Newline, &path, &mut Rng::new(1));
    // Repaired: whole entries only, and as many as before.
    assert!(eventually(PATIENCE, || fs::metadata(&idx).unwrap().len() == len));
}

#[test]
fn corrupt_index_is_repaired_or_refused() {
    // Garbage over the entries: the valid prefix is kept, the rest rebuilt.
    let dir = tempdir();
    let path = dir.path().join("log");
    let idx = indexed_log(&path, 300, 12);
    let f = OpenOptions::new().write(true).open(&idx).unwrap();
    f.write_all_at(&random_bytes(100, 3), 64 + 12 * 10).unwrap();
    drop(f);
    let mut p = start(&path, Framing::Newline, &["--stride", "4"]);
    assert!(p.log.wait_for("torn or corrupt tail", PATIENCE).is_some());
    check_all(
        &mut Client::new(&p),
        Framing::Newline,
        &path,
        &mut Rng::new(2),
    );
    // Stopped as a service is (SIGTERM, waited for), so the index is whole before the next
    // damage: a SIGKILL could land in the middle of the rebuild's write, and the next
    // phase would find other damage than its own.
    p.signal(Signal::TERM);
    assert!(p.wait_exit(PATIENCE).is_some_and(|s| s.success()));

    // A damaged header (our magic, bad checksum): rebuilt.
    let f = OpenOptions::new().write(true).open(&idx).unwrap();
    f.write_all_at(b"\xff\xff", 20).unwrap();
    drop(f);
    let mut p = start(&path, Framing::Newline, &["--stride", "4"]);
    assert!(p.log.wait_for("header is corrupt", PATIENCE).is_some());
    check_all(
        &mut Client::new(&p),
        Framing::Newline,
        &path,
        &mut Rng::new(3),
    );
    // Stopped as a service is (SIGTERM, waited for), so the index is whole before the next
    // damage: a SIGKILL could land in the middle of the rebuild's write, and the next
    // phase would find other damage than its own.
    p.signal(Signal::TERM);
    assert!(p.wait_exit(PATIENCE).is_some_and(|s| s.success()));

    // Not an index at all: refused with a clear error, and left untouched.
    let garbage = random_bytes(500, 4);
    fs::write(&idx, &garbage).unwrap();
    let mut p = indexer(&path).args(["--stride", "4"]).spawn();
    let status = p.wait_exit(PATIENCE).expect("indexer should exit");
    assert!(!status.success());
    assert!(
        p.log.text().contains("is not a tailsrv-indexer index"),
        "{}",
        p.log.text()
    );
    assert_eq!(fs::read(&idx).unwrap(), garbage);
}

#[test]
fn replaced_or_rewritten_log_is_reindexed() {
    let dir = tempdir();
    let path = dir.path().join("log");
    indexed_log(&path, 300, 13);

    // Replaced: a new inode under the same name.
    let tmp = dir.path().join("new");
    fs::write(
        &tmp,
        random_stream(Framing::Newline, 200, &mut Rng::new(14)),
    )
    .unwrap();
    fs::rename(&tmp, &path).unwrap();
    let p = start(&path, Framing::Newline, &["--stride", "4"]);
    assert!(p
        .log
        .wait_for("the log file was replaced", PATIENCE)
        .is_some());
    check_all(
        &mut Client::new(&p),
        Framing::Newline,
        &path,
        &mut Rng::new(1),
    );
    drop(p);

    // Rewritten in place (same inode, same length, other message boundaries).
    let len = fs::metadata(&path).unwrap().len() as usize;
    let mut other = Vec::new();
    while other.len() < len {
        other.extend_from_slice(
            b"a line of another length than any of the old ones, say 71 bytes long\n",
        );
    }
    other.truncate(len);
    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all_at(&other, 0)
        .unwrap();
    let p = start(&path, Framing::Newline, &["--stride", "4"]);
    assert!(p.log.wait_for("does not match the log", PATIENCE).is_some());
    check_all(
        &mut Client::new(&p),
        Framing::Newline,
        &path,
        &mut Rng::new(2),
    );
    drop(p);

    // Truncated while the indexer was down.
    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(100)
        .unwrap();
    let p = start(&path, Framing::Newline, &["--stride", "4"]);
    assert!(p
        .log
        .wait_for("shorter than the indexed", PATIENCE)
        .is_some());
    check_all(
        &mut Client::new(&p),
        Framing::Newline,
        &path,
        &mut Rng::new(3),
    );
}

#[test]
fn truncated_while_running_is_rebuilt() {
    let dir = tempdir();
    let path = dir.path().join("log");
    let mut rng = Rng::new(21);
    fs::write(&path, random_stream(Framing::Nul, 300, &mut rng)).unwrap();
    let p = start(&path, Framing::Nul, &["--stride", "4"]);
    let mut c = Client::new(&p);
    check_all(&mut c, Framing::Nul, &path, &mut rng);
    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    assert!(p.log.wait_for("the log was truncated", PATIENCE).is_some());
    append(&path, &random_stream(Framing::Nul, 50, &mut rng));
    check_all(&mut c, Framing::Nul, &path, &mut rng);
}

#[test]
fn framing_or_stride_change_rebuilds() {
    let dir = tempdir();
    let path = dir.path().join("log");
    indexed_log(&path, 100, 31);
    let mut p = start(&path, Framing::Newline, &[]);
    assert!(p.log.wait_for("written with stride 4", PATIENCE).is_some());
    check_all(
        &mut Client::new(&p),
        Framing::Newline,
        &path,
        &mut Rng::new(1),
    );
    p.signal(Signal::TERM);
    assert!(p.wait_exit(PATIENCE).is_some());
    // Same bytes read as nul-delimited: a different index (one message, if any NUL at all).
    let p = start(&path, Framing::Nul, &[]);
    assert!(p
        .log
        .wait_for("written for framing newline", PATIENCE)
        .is_some());
    check_all(&mut Client::new(&p), Framing::Nul, &path, &mut Rng::new(2));
}

#[test]
fn error_answers_keep_the_connection() {
    let dir = tempdir();
    let path = dir.path().join("log");
    fs::write(&path, b"a\nbb\nccc\n").unwrap();
    let p = start(&path, Framing::Newline, &[]);
    let mut c = Client::new(&p);
    c.wait_count("count", 3);
    for (q, want) in [
        (
            "frobnicate 3",
            "error: bad-request: unknown command \"frobnicate\"",
        ),
        (
            "offset-of",
            "error: bad-request: offset-of needs a message number",
        ),
        ("offset-of x", "error: bad-request: bad number \"x\""),
        ("offset-of -1", "error: bad-request: bad number \"-1\""),
        (
            "offset-of 99999999999999999999",
            "error: bad-request: bad number",
        ),
        ("offset-of 1 2", "error: bad-request: unexpected \"2\""),
        (
            "offset-of 4",
            "error: not-yet: message 4 does not exist yet",
        ),
        (
            "message-at 9",
            "error: not-yet: byte 9 is not in a complete message yet",
        ),
        ("count 1", "error: bad-request: count takes no argument"),
        ("", "error: bad-request: empty request"),
    ] {
        let a = c.ask(q);
        assert!(a.starts_with(want), "{q:?} answered {a:?}");
        // Still usable after every error.
        assert_eq!(c.ask("count"), "3");
    }
    assert_eq!(c.ask("offset-of 3"), "9");
    assert_eq!(c.ask(" offset-of 2 \r"), "5");
    assert_eq!(c.ask("message-at 4"), "1");

    // A line over 256 bytes: an error, then the connection is closed.
    let mut s = p.connect();
    s.write_all(format!("count\n{}\n", "9".repeat(300)).as_bytes())
        .unwrap();
    let text = read_text(&mut s);
    assert!(
        text.starts_with("3\nerror: too-long: request line longer than 256 bytes"),
        "{text:?}"
    );
    // A last request without its newline is answered before the close.
    let mut s = p.connect();
    s.write_all(b"count\noffset-of 1").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut s), b"3\n2\n");
    // Exactly 256 is fine.
    let long = format!("offset-of {:0>246}", 1);
    assert_eq!(long.len(), 256);
    assert_eq!(c.ask(&long), "2");
}

#[test]
fn malformed_prefixes_stop_indexing_with_an_error() {
    for (framing, bad, reason) in [
        (
            Framing::U32Be,
            vec![0x7f, 0xff, 0xff, 0xff],
            "over the limit",
        ),
        (Framing::Varint, vec![0x80; 11], "malformed varint"),
        // Over a --max-message of 1000 (given below).
        (Framing::Varint, vec![0xe9, 0x07], "claims 1001 bytes"),
    ] {
        let dir = tempdir();
        let path = dir.path().join("log");
        let mut good = Vec::new();
        for m in [&b"one"[..], b"", b"three"] {
            encode(framing, m, &mut good);
        }
        fs::write(&path, &good).unwrap();
        let p = start(&path, framing, &["--max-message", "1000"]);
        let mut c = Client::new(&p);
        c.wait_count("count", 3);
        let mut bad_tail = bad.clone();
        bad_tail.extend_from_slice(&[0u8; 2000]);
        append(&path, &bad_tail);
        assert!(p.log.wait_for("indexing stopped", PATIENCE).is_some());
        let (starts, end) = naive_starts(framing, &good);
        for q in [
            "count",
            "offset-of 3",
            "offset-of 4",
            &format!("message-at {end}"),
        ] {
            let a = c.ask(q);
            assert!(
                a.starts_with(&format!(
                    "error: bad-log: indexing stopped at byte {end} after 3"
                )) && a.contains(reason),
                "{framing:?} {q:?} answered {a:?}"
            );
        }
        // Answers before the bad prefix are still exact.
        for (i, s) in starts.iter().enumerate() {
            assert_eq!(c.number(&format!("offset-of {i}")), *s);
        }
        assert_eq!(c.number("message-at 0"), 0);
    }
}

#[test]
fn waits_for_the_log_and_exits_when_it_goes() {
    let dir = tempdir();
    let path = dir.path().join("log");
    let mut p = start(&path, Framing::Newline, &[]);
    let mut c = Client::new(&p);
    assert!(c
        .ask("count")
        .starts_with("error: loading: the log file does not exist yet"));
    append(&path, b"hello\nworld\n");
    c.wait_count("count", 2);
    assert_eq!(c.ask("offset-of 1"), "6");
    // The index goes beside the log by default.
    assert!(dir.path().join("log.idx").exists());
    fs::remove_file(&path).unwrap();
    let status = p.wait_exit(PATIENCE).expect("indexer should exit");
    assert!(status.success(), "{}", p.log.text());
}

#[test]
fn index_elsewhere_and_command_line() {
    let dir = tempdir();
    let path = dir.path().join("log");
    let idx = dir.path().join("sub-idx");
    fs::write(&path, b"x\ny\n").unwrap();
    let p = start(&path, Framing::Newline, &["--index", idx.to_str().unwrap()]);
    Client::new(&p).wait_count("count", 2);
    assert!(idx.exists());
    assert!(!dir.path().join("log.idx").exists());

    for (flag, want) in [("--help", "offset-of"), ("--version", "0.")] {
        let (status, out, _) = Spawn::bin(BIN).arg(flag).run();
        assert!(status.success());
        assert!(String::from_utf8_lossy(&out).contains(want));
    }
    let (status, _, err) = Spawn::bin(BIN)
        .args(["-p", "0", "--framing", "csv", "log"])
        .run();
    assert!(!status.success());
    assert!(err.contains("u32be"));
}
