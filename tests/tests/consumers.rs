//! The consumers end to end: `tscat` and `tsmirror` against real tailsrv (and
//! tailsrv-indexer) processes on 127.0.0.1, killed and restarted under them.
//!
//! Ground truth is always the test's own copy of what it appended; message offsets are
//! computed by the test's own encoders (newline, nul, u32be, varint written here, not by
//! the code under test). tscat's stdout is captured raw, byte for byte.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use tests::*;

/// What tscat may repeat after `kill -9` (its --help and the README state this bound):
/// 256 KiB of checkpoint interval plus one 64 KiB read plus what the (64 KiB) pipe held.
const KILL_REPEAT_BOUND: usize = (256 + 64 + 64) << 10;

/// Starts tailsrv on `path` at `port` (0: a free one).
fn tailsrv(path: &Path, port: u16) -> Proc {
    let args: Vec<String> = vec![
        "-p".into(),
        port.to_string(),
        "--bind".into(),
        "127.0.0.1".into(),
        path.display().to_string(),
    ];
    Proc::start("tailsrv", &args)
}

/// Starts tailsrv-indexer on `path` with `framing`, its index in `dir`.
fn indexer(path: &Path, framing: &str, dir: &Path) -> Proc {
    let index = dir.join(format!("{framing}.idx"));
    let args: Vec<String> = vec![
        "-p".into(),
        "0".into(),
        "--bind".into(),
        "127.0.0.1".into(),
        "--framing".into(),
        framing.into(),
        "--index".into(),
        index.display().to_string(),
        path.display().to_string(),
    ];
    Proc::start("tailsrv-indexer", &args)
}

/// Asks an indexer one question (test-side client, to wait for it to catch up).
fn ask_indexer(ix: &Proc, request: &str) -> String {
    let mut s = ix.connect();
    s.write_all(format!("{request}\n").as_bytes()).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while s.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        answer.push(byte[0]);
    }
    String::from_utf8(answer).unwrap()
}

/// Bytes a child writes to one pipe, collected by a thread, with a way to wait on them.
#[derive(Clone, Default)]
struct Capture(Arc<(Mutex<Captured>, Condvar)>);

/// The bytes so far, and whether the pipe has closed.
type Captured = (Vec<u8>, bool);

impl Capture {
    fn of(mut pipe: impl Read + Send + 'static) -> Capture {
        let c = Capture::default();
        let sink = c.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = pipe.read(&mut buf).unwrap_or(0);
                let (lock, cv) = &*sink.0;
                let mut g = lock.lock().unwrap();
                if n == 0 {
                    g.1 = true;
                } else {
                    g.0.extend_from_slice(&buf[..n]);
                }
                cv.notify_all();
                if n == 0 {
                    return;
                }
            }
        });
        c
    }

    /// Waits until `cond(bytes, closed)` holds; false after [`PATIENCE`].
    fn wait(&self, cond: impl Fn(&[u8], bool) -> bool) -> bool {
        let (lock, cv) = &*self.0;
        let deadline = Instant::now() + PATIENCE;
        let mut g = lock.lock().unwrap();
        while !cond(&g.0, g.1) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            g = cv.wait_timeout(g, left).unwrap().0;
        }
        true
    }

    fn bytes(&self) -> Vec<u8> {
        self.0 .0.lock().unwrap().0.clone()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }
}

/// A running consumer binary (tscat, tsmirror), stdout captured raw, stderr as text.
/// Killed by pid when dropped.
struct Consumer {
    child: Child,
    out: Capture,
    err: Capture,
}

impl Consumer {
    fn start(name: &str, args: &[String]) -> Consumer {
        let (child, stdout, err) = spawn(name, args);
        Consumer {
            child,
            out: Capture::of(stdout),
            err,
        }
    }

    /// Waits until the output satisfies `cond`; fails the test with context after [`PATIENCE`].
    fn wait_until(&self, what: &str, cond: impl Fn(&[u8]) -> bool) {
        if !self.out.wait(|o, _| cond(o)) {
            panic!(
                "timed out waiting for {what}; {} bytes of output; stderr:\n{}",
                self.out.bytes().len(),
                self.err.text()
            );
        }
    }

    fn wait_len(&self, n: usize) {
        self.wait_until(&format!("{n} bytes"), |o| o.len() >= n);
    }

    /// Waits until stderr contains `needle` `times` times.
    fn wait_stderr(&self, needle: &str, times: usize) {
        let found = self
            .err
            .wait(|e, _| String::from_utf8_lossy(e).matches(needle).count() >= times);
        assert!(
            found,
            "no {needle:?} x{times} in stderr:\n{}",
            self.err.text()
        );
    }

    fn output(&self) -> Vec<u8> {
        self.out.bytes()
    }

    fn signal(&self, sig: Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, sig);
    }

    /// Waits for the exit and the end of both pipes: status, whole stdout, whole stderr.
    fn finish(mut self) -> (ExitStatus, Vec<u8>, String) {
        let status = wait_exit(&mut self.child);
        assert!(self.out.wait(|_, closed| closed), "stdout never closed");
        assert!(self.err.wait(|_, closed| closed), "stderr never closed");
        (status, self.out.bytes(), self.err.text())
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns a binary with stdout piped (returned unread) and stderr captured (its log, as text
/// lines: the tests look for messages that JSON would escape).
fn spawn(name: &str, args: &[String]) -> (Child, ChildStdout, Capture) {
    let mut child = Command::new(bin(name))
        .args(["--log-format", "text"])
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    let stdout = child.stdout.take().unwrap();
    let err = Capture::of(child.stderr.take().unwrap());
    (child, stdout, err)
}

fn wait_exit(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "process did not exit in time");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs tscat until it exits by itself: status, stdout, stderr.
fn tscat_once(args: &[String]) -> (ExitStatus, Vec<u8>, String) {
    Consumer::start("tscat", args).finish()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// A port nothing listens on (bound, then released).
fn dead_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Text lines that carry their own number, so a line says where it sits in the file.
struct Lines {
    data: Vec<u8>,
    /// Offset where line i starts.
    starts: Vec<usize>,
}

impl Lines {
    fn new() -> Lines {
        Lines {
            data: Vec::new(),
            starts: Vec::new(),
        }
    }

    /// Appends `n` more lines (of varying length) to the test's copy; returns their bytes.
    fn more(&mut self, n: usize) -> Vec<u8> {
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
    fn offset_of_first(&self, bytes: &[u8]) -> usize {
        let n: usize = std::str::from_utf8(&bytes[5..14]).unwrap().parse().unwrap();
        self.starts[n]
    }
}

/// Appends lines from a thread until told to stop (bounded in count), keeping the test's copy.
struct Writer {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Lines>>,
}

impl Writer {
    fn start(path: PathBuf, mut lines: Lines) -> Writer {
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

    fn finish(mut self) -> Lines {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------

#[test]
fn server_killed_and_restarted_mid_stream_output_is_exact() {
    let dir = tempdir();
    let path = dir.path().join("log");
    let mut all = random_bytes(300_000, 1);
    append(&path, &all);
    let srv = tailsrv(&path, 0);
    let port = srv.addr().port();
    let cat = Consumer::start(
        "tscat",
        &args(&["--from-byte", "0", &srv.addr().to_string()]),
    );
    cat.wait_len(all.len());

    let more = random_bytes(200_000, 2);
    append(&path, &more);
    all.extend_from_slice(&more);
    drop(srv); // SIGKILL, possibly mid-send
    let more = random_bytes(150_000, 3);
    append(&path, &more);
    all.extend_from_slice(&more);
    let srv = tailsrv(&path, port);
    cat.wait_len(all.len());

    // And again, with the server gone a little longer (a few backoff rounds).
    drop(srv);
    let more = random_bytes(50_000, 4);
    append(&path, &more);
    all.extend_from_slice(&more);
    // Let tscat fail a few rounds first (backoff), then bring the server back.
    cat.wait_stderr("cannot connect", 3);
    let _srv = tailsrv(&path, port);
    cat.wait_len(all.len());

    cat.signal(Signal::TERM);
    let (status, out, err) = cat.finish();
    assert!(status.success(), "{status:?}: {err}");
    assert_eq!(out.len(), all.len(), "{err}");
    assert!(out == all, "output differs from the file");
    assert!(err.contains("reconnecting"), "{err}");
}

#[test]
fn state_file_kill9_repeats_within_bound_sigterm_repeats_nothing() {
    let dir = tempdir();
    let path = dir.path().join("log");
    let state = dir.path().join("state");
    let mut lines = Lines::new();
    append(&path, &lines.more(2_000));
    let srv = tailsrv(&path, 0);
    let writer = Writer::start(path.clone(), lines);
    let cat_args = args(&[
        "--state",
        state.to_str().unwrap(),
        "--framing",
        "newline",
        &srv.addr().to_string(),
    ]);

    // Run 1 dies by kill -9 mid-stream.
    let cat = Consumer::start("tscat", &cat_args);
    cat.wait_len(600_000);
    cat.signal(Signal::KILL);
    let (_, out1, _) = cat.finish();

    // Run 2 resumes from the last checkpoint, then stops cleanly on SIGTERM mid-stream.
    let cat = Consumer::start("tscat", &cat_args);
    cat.wait_len(600_000);
    cat.signal(Signal::TERM);
    let (status, out2, err2) = cat.finish();
    assert!(status.success(), "{status:?}: {err2}");

    // Run 3 must continue exactly where run 2 stopped, to the end.
    let cat = Consumer::start("tscat", &cat_args);
    cat.wait_len(100_000);
    let lines = writer.finish();
    let file = std::fs::read(&path).unwrap();
    assert_eq!(file, lines.data, "the test's copy is the file");
    let start2 = lines.offset_of_first(&out2);
    let start3 = start2 + out2.len();
    cat.wait_len(file.len() - start3);
    cat.signal(Signal::TERM);
    let (status, out3, err3) = cat.finish();
    assert!(status.success(), "{status:?}: {err3}");

    // Run 1: a prefix of the file. Run 2: from a line start at or before where run 1 got
    // to, repeating at most the stated bound, never skipping.
    assert!(file.starts_with(&out1), "run 1 is not a prefix of the file");
    assert!(
        start2 <= out1.len(),
        "run 2 skipped bytes: resumed at {start2}, run 1 wrote {}",
        out1.len()
    );
    assert!(
        out1.len() - start2 <= KILL_REPEAT_BOUND,
        "run 2 repeated {} bytes, over the bound",
        out1.len() - start2
    );
    assert!(
        out2 == file[start2..start3],
        "run 2 is not the file from {start2}"
    );
    // Run 3 after a clean stop: exactly the rest, nothing lost or repeated.
    assert_eq!(out3.len(), file.len() - start3, "run 3 length");
    assert!(
        out3 == file[start3..],
        "run 3 is not the file from {start3}"
    );
    let saved = std::fs::read_to_string(&state).unwrap();
    assert_eq!(
        saved,
        format!("tailsrv-consumer-state 1\noffset {}\n", file.len())
    );
}

#[test]
fn fails_over_to_a_tsmirror_replica_without_gap_or_duplicate() {
    let dir = tempdir();
    let primary_file = dir.path().join("primary");
    let replica_file = dir.path().join("replica");
    let mut all = random_bytes(250_000, 10);
    append(&primary_file, &all);
    let primary = tailsrv(&primary_file, 0);
    let mirror = Consumer::start(
        "tsmirror",
        &args(&[&primary.addr().to_string(), replica_file.to_str().unwrap()]),
    );
    let replica = tailsrv(&replica_file, 0);
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len() as usize).unwrap_or(0);
    assert!(eventually(PATIENCE, || len(&replica_file) == all.len()));

    let servers = format!("{},{}", primary.addr(), replica.addr());
    let cat = Consumer::start("tscat", &args(&["--servers", &servers]));
    cat.wait_len(all.len());

    // The mirror stops; the primary moves ahead of the replica, and tscat with it.
    mirror.signal(Signal::TERM);
    let (status, _, err) = mirror.finish();
    assert!(status.success(), "tsmirror: {status:?} {err}");
    let ahead = random_bytes(70_000, 11);
    append(&primary_file, &ahead);
    all.extend_from_slice(&ahead);
    cat.wait_len(all.len());

    // The primary dies. tscat fails over to the replica, which is behind: it must wait there
    // (not skip, not repeat) until the replica catches up and grows.
    drop(primary);
    cat.wait_stderr("reconnected", 1);
    let mut replica_data = std::fs::read(&replica_file).unwrap();
    replica_data.extend_from_slice(&ahead);
    append(&replica_file, &ahead);
    let fresh = random_bytes(90_000, 12);
    append(&replica_file, &fresh);
    all.extend_from_slice(&fresh);
    replica_data.extend_from_slice(&fresh);
    assert!(replica_data == all);
    cat.wait_len(all.len());
    cat.signal(Signal::TERM);
    let (status, out, err) = cat.finish();
    assert!(status.success(), "{status:?}: {err}");
    assert_eq!(out.len(), all.len(), "{err}");
    assert!(out == all, "output differs from the stream");
}

#[test]
fn tsmirror_interrupted_many_times_stays_byte_identical() {
    let dir = tempdir();
    let source = dir.path().join("source");
    let replica = dir.path().join("replica");
    let mut lines = Lines::new();
    append(&source, &lines.more(1_000));
    let srv = tailsrv(&source, 0);
    let writer = Writer::start(source.clone(), lines);
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mirror_args = args(&[&srv.addr().to_string(), replica.to_str().unwrap()]);

    for round in 0..10 {
        let before = len(&replica);
        let mirror = Consumer::start("tsmirror", &mirror_args);
        assert!(
            eventually(PATIENCE, || len(&replica) > before + 50_000),
            "round {round}: the replica does not grow"
        );
        if round == 3 {
            // A second mirror of the same file is refused, and changes nothing.
            let (status, _, err) = Consumer::start("tsmirror", &mirror_args).finish();
            assert_eq!(status.code(), Some(3), "{err}");
            assert!(err.contains("locked"), "{err}");
        }
        if round % 2 == 0 {
            mirror.signal(Signal::KILL);
            mirror.finish();
        } else {
            mirror.signal(Signal::TERM);
            let (status, _, err) = mirror.finish();
            assert!(status.success(), "round {round}: {status:?} {err}");
        }
    }
    let lines = writer.finish();
    let _mirror = Consumer::start("tsmirror", &mirror_args);
    assert!(eventually(PATIENCE, || len(&replica) >= lines.data.len() as u64));
    let copy = std::fs::read(&replica).unwrap();
    assert_eq!(copy.len(), lines.data.len());
    assert!(copy == lines.data, "replica differs from the source");
}

/// One message, by the tests' own encoder (independent of proto::framing).
fn encode(framing: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    tests::framed::encode(framing, payload, &mut out);
    out
}

/// Message `i`'s payload for `framing`: sizes from 0 to over 64 KiB, without the delimiter.
fn payload(framing: &str, i: usize) -> Vec<u8> {
    let len = match i % 50 {
        0 => 0,
        17 => 70_000,
        k => (k * 37 + i) % 400,
    };
    let mut p = random_bytes(len, i as u64 + 1000);
    let avoid = match framing {
        "newline" => Some(b'\n'),
        "nul" => Some(0),
        _ => None,
    };
    if let Some(d) = avoid {
        for b in &mut p {
            if *b == d {
                *b = b'.';
            }
        }
    }
    p
}

/// Encodes `n` messages; returns the bytes and each message's start offset (plus the end).
fn messages(framing: &str, from: usize, n: usize) -> (Vec<u8>, Vec<usize>) {
    let mut data = Vec::new();
    let mut starts = Vec::new();
    for i in from..from + n {
        starts.push(data.len());
        data.extend_from_slice(&encode(framing, &payload(framing, i)));
    }
    starts.push(data.len());
    (data, starts)
}

#[test]
fn from_message_lands_exactly_on_message_n_for_every_framing() {
    for framing in ["newline", "nul", "u32be", "varint"] {
        let dir = tempdir();
        let path = dir.path().join("log");
        let count = 120;
        let (mut data, starts) = messages(framing, 0, count);
        append(&path, &data);
        let ix = indexer(&path, framing, dir.path());
        let srv = tailsrv(&path, 0);
        assert!(
            eventually(PATIENCE, || ask_indexer(&ix, "count") == count.to_string()),
            "{framing}: indexer never counted {count}"
        );
        let common = |extra: &[&str]| {
            let mut a = args(extra);
            a.extend(args(&[
                "-v",
                "--indexer",
                &ix.addr().to_string(),
                "--framing",
                framing,
            ]));
            a.push(srv.addr().to_string());
            a
        };
        let mut cats = Vec::new();
        for n in [0, 1, 17, 18, 99, count - 1, count] {
            let cat = Consumer::start("tscat", &common(&["--from-message", &n.to_string()]));
            cats.push((format!("--from-message {n}"), starts[n], cat));
        }
        // Relative starts resolved by the indexer to message boundaries.
        cats.push((
            "--from-end".into(),
            data.len(),
            Consumer::start("tscat", &common(&["--from-end"])),
        ));
        let last = 1_000;
        let cut = data.len() - last;
        let holder = starts.iter().rposition(|&s| s <= cut).unwrap();
        cats.push((
            format!("--last {last}"),
            starts[holder],
            Consumer::start("tscat", &common(&["--last", &last.to_string()])),
        ));
        for (what, from, cat) in &cats {
            cat.wait_len(data.len() - from);
            assert!(cat.output() == data[*from..], "{framing} {what}");
            // Where a relative start lands is fixed once tscat has asked and connected.
            cat.wait_stderr("connected", 1);
        }
        // Everyone follows: two more messages, the first appended in two pieces.
        let (more, _) = messages(framing, count, 2);
        append(&path, &more[..3]);
        append(&path, &more[3..]);
        data.extend_from_slice(&more);
        for (what, from, cat) in cats {
            cat.wait_len(data.len() - from);
            cat.signal(Signal::TERM);
            let (status, out, err) = cat.finish();
            assert!(status.success(), "{framing} {what}: {status:?} {err}");
            assert!(
                out == data[from..],
                "{framing} {what}: {} bytes, expected {}",
                out.len(),
                data.len() - from
            );
        }
    }
}

#[test]
fn whole_messages_only_across_a_stop() {
    let dir = tempdir();
    let path = dir.path().join("log");
    let state = dir.path().join("state");
    // Varint framing, a stop while the file ends inside a length prefix.
    let (data, starts) = messages("varint", 0, 20);
    let big = 17; // the 70,000-byte message: a 3-byte prefix
    append(&path, &data[..starts[big] + 1]);
    let srv = tailsrv(&path, 0);
    let cat_args = args(&[
        "--framing",
        "varint",
        "--state",
        state.to_str().unwrap(),
        &srv.addr().to_string(),
    ]);
    let cat = Consumer::start("tscat", &cat_args);
    cat.wait_len(starts[big]);
    // The checkpoint reaches the last complete message (and no further) once tscat is idle.
    let expect_state = |n: usize| format!("tailsrv-consumer-state 1\noffset {n}\n");
    assert!(eventually(PATIENCE, || std::fs::read_to_string(&state)
        .ok()
        == Some(expect_state(starts[big]))));
    // Half the big message, then stop: it must not come out.
    append(&path, &data[starts[big] + 1..starts[big] + 40_000]);
    cat.signal(Signal::TERM);
    let (status, out, err) = cat.finish();
    assert!(status.success(), "{status:?}: {err}");
    assert!(out == data[..starts[big]], "output is not whole messages");
    assert_eq!(
        std::fs::read_to_string(&state).unwrap(),
        expect_state(starts[big])
    );

    append(&path, &data[starts[big] + 40_000..]);
    let cat = Consumer::start("tscat", &cat_args);
    cat.wait_len(data.len() - starts[big]);
    cat.signal(Signal::INT);
    let (status, out, err) = cat.finish();
    assert!(status.success(), "{status:?}: {err}");
    assert!(out == data[starts[big]..], "resumed output differs");
    assert_eq!(
        std::fs::read_to_string(&state).unwrap(),
        expect_state(data.len())
    );
}

// --- error paths ------------------------------------------------------------------------------

#[test]
fn unreachable_servers_fail_clearly() {
    let dead = format!("127.0.0.1:{}", dead_port());
    let (status, out, err) = tscat_once(&args(&["--no-retry", &dead]));
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(out.is_empty());
    assert!(
        err.contains("no server reachable") && err.contains(&dead),
        "{err}"
    );

    let other = format!("127.0.0.1:{}", dead_port());
    let list = format!("{dead},{other}");
    let (status, _, err) = tscat_once(&args(&["--give-up-after", "1", "--servers", &list]));
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("gave up after 1.0s"), "{err}");
    assert!(err.contains(&dead) && err.contains(&other), "{err}");
    assert!(
        err.matches("cannot connect").count() >= 4,
        "retried with backoff: {err}"
    );
}

#[test]
fn indexer_errors_fail_clearly() {
    let dir = tempdir();
    let path = dir.path().join("log");
    append(&path, b"a\nb\nc\n");
    let ix = indexer(&path, "newline", dir.path());
    let srv = tailsrv(&path, 0);
    assert!(eventually(PATIENCE, || ask_indexer(&ix, "count") == "3"));
    let (status, out, err) = tscat_once(&args(&[
        "--from-message",
        "10",
        "--indexer",
        &ix.addr().to_string(),
        &srv.addr().to_string(),
    ]));
    assert_eq!(status.code(), Some(4), "{err}");
    assert!(out.is_empty());
    assert!(err.contains("refused \"offset-of 10\""), "{err}");

    let dead = format!("127.0.0.1:{}", dead_port());
    let (status, _, err) = tscat_once(&args(&[
        "--from-message",
        "1",
        "--indexer",
        &dead,
        &srv.addr().to_string(),
    ]));
    assert_eq!(status.code(), Some(4), "{err}");
    assert!(err.contains(&format!("indexer {dead}")), "{err}");
}

#[test]
fn state_file_errors_fail_clearly() {
    let dir = tempdir();
    let path = dir.path().join("log");
    append(&path, b"hello\n");
    let srv = tailsrv(&path, 0);
    let state = dir.path().join("state");
    let garbage = b"tailsrv-consumer-state 1\noffset twelve\n";
    std::fs::write(&state, garbage).unwrap();
    let cat_args = args(&["--state", state.to_str().unwrap(), &srv.addr().to_string()]);
    let (status, out, err) = tscat_once(&cat_args);
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(out.is_empty());
    assert!(
        err.contains("corrupt") && err.contains(state.to_str().unwrap()),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&state).unwrap(),
        garbage,
        "a corrupt state file is left alone"
    );

    // Two consumers on one state file: the second is refused.
    std::fs::remove_file(&state).unwrap();
    let first = Consumer::start("tscat", &cat_args);
    first.wait_len(6);
    let (status, _, err) = tscat_once(&cat_args);
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(err.contains("in use"), "{err}");
}

#[test]
fn option_combinations_that_cannot_work_are_refused() {
    let dir = tempdir();
    let state = dir.path().join("state");
    let state = state.to_str().unwrap();
    let srv = "127.0.0.1:9"; // never contacted
    for (case, needle) in [
        (
            vec!["--last", "10", "--framing", "u32be", srv],
            "needs --indexer",
        ),
        (vec!["--from-message", "3", srv], "--indexer"),
        (
            vec!["--from-byte", "1", "--last", "3", srv],
            "cannot be used with",
        ),
        (vec!["--from-byte", "1"], "no server given"),
    ] {
        let (status, out, err) = tscat_once(&args(&case));
        assert_eq!(status.code(), Some(2), "{case:?}: {err}");
        assert!(out.is_empty());
        assert!(err.contains(needle), "{case:?}: {err}");
    }
    assert!(!Path::new(state).exists(), "a refused run writes no state");
}

#[test]
fn malformed_message_stops_after_the_last_good_one() {
    let dir = tempdir();
    let path = dir.path().join("log");
    let good = encode("u32be", b"fine");
    append(&path, &good);
    append(&path, &[0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
    let srv = tailsrv(&path, 0);
    let (status, out, err) = tscat_once(&args(&[
        "--framing",
        "u32be",
        "--max-message",
        "1000",
        &srv.addr().to_string(),
    ]));
    assert_eq!(status.code(), Some(5), "{err}");
    assert_eq!(out, good);
    assert!(
        err.contains("malformed") && err.contains("at byte 8"),
        "{err}"
    );
}

#[test]
fn refusal_lines_are_never_output_and_are_retried() {
    let dir = tempdir();
    let path = dir.path().join("log");
    let data = random_bytes(5_000, 20);
    append(&path, &data);
    let mut args_srv: Vec<String> = args(&["-p", "0", "--bind", "127.0.0.1", "--max-clients", "1"]);
    args_srv.push(path.display().to_string());
    let srv = Proc::start("tailsrv", &args_srv);
    // Take the only slot (it is ours once bytes flow).
    let mut holder = srv.connect();
    holder.write_all(b"0\n").unwrap();
    read_exact(&mut holder, 10);

    let (status, out, err) = tscat_once(&args(&["--no-retry", &srv.addr().to_string()]));
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(out.is_empty(), "the refusal reached stdout: {out:?}");
    assert!(err.contains("too many clients"), "{err}");

    let cat = Consumer::start("tscat", &args(&[&srv.addr().to_string()]));
    cat.wait_stderr("too many clients", 1);
    drop(holder);
    cat.wait_len(data.len());
    cat.signal(Signal::TERM);
    let (status, out, err) = cat.finish();
    assert!(status.success(), "{err}");
    assert!(out == data, "output differs from the file");
}

#[test]
fn data_that_looks_like_a_refusal_is_still_data() {
    // The repro of issue #10: the unread tail of the file is one line that reads like a
    // refusal, and the server goes away right after sending it. tscat and tsmirror used to
    // stop for good ("refused"); with the confirmation line, data is only ever data.
    let dir = tempdir();
    let path = dir.path().join("log");
    let replica = dir.path().join("replica");
    let mut data = b"error: not-served: this line is data\n".to_vec();
    append(&path, &data);
    let srv = tailsrv(&path, 0);
    let port = srv.addr().port();
    let addr = srv.addr().to_string();
    let cat = Consumer::start("tscat", &args(&[&addr]));
    let mirror = Consumer::start("tsmirror", &args(&[&addr, replica.to_str().unwrap()]));
    cat.wait_len(data.len());
    assert!(eventually(PATIENCE, || std::fs::read(&replica)
        .is_ok_and(|r| r.len() == data.len())));
    drop(srv); // the connection closes right after the refusal-like line
    for line in [
        &b"error: busy: too many clients\n"[..],
        b"error: bad-request: x\n",
    ] {
        append(&path, line);
        data.extend_from_slice(line);
    }
    let _srv = tailsrv(&path, port);
    cat.wait_len(data.len());
    assert!(eventually(PATIENCE, || std::fs::read(&replica)
        .is_ok_and(|r| r.len() == data.len())));
    for c in [cat, mirror] {
        c.signal(Signal::TERM);
        let (status, out, err) = c.finish();
        assert!(status.success(), "{err}");
        assert!(out.is_empty() || out == data, "{err}");
    }
    assert_eq!(std::fs::read(&replica).unwrap(), data);
}

#[test]
fn a_relative_start_is_confirmed_by_the_server_and_resumes_exactly() {
    let dir = tempdir();
    let path = dir.path().join("log");
    let state = dir.path().join("state");
    append(&path, b"old\n");
    let srv = tailsrv(&path, 0);
    let port = srv.addr().port();
    // --last 4 and a state file: the server resolves the start and says where (`ok 0`), so
    // the position is absolute from the first byte on.
    let cat = Consumer::start(
        "tscat",
        &args(&[
            "--last",
            "4",
            "--state",
            state.to_str().unwrap(),
            &srv.addr().to_string(),
        ]),
    );
    cat.wait_len(4);
    append(&path, b"new\n");
    cat.wait_len(8);
    drop(srv); // SIGKILL
    append(&path, b"while down\n");
    let _srv = tailsrv(&path, port);
    cat.wait_len(19);
    cat.signal(Signal::TERM);
    let (status, out, err) = cat.finish();
    assert!(status.success(), "{err}");
    assert_eq!(out, b"old\nnew\nwhile down\n", "{err}");
    let saved = std::fs::read_to_string(&state).unwrap();
    assert_eq!(saved, "tailsrv-consumer-state 1\noffset 19\n");
}

#[test]
fn closed_output_is_a_clean_stop_with_an_exact_checkpoint() {
    let dir = tempdir();
    let path = dir.path().join("log");
    let state = dir.path().join("state");
    let data = random_bytes(2_000_000, 30);
    append(&path, &data);
    let srv = tailsrv(&path, 0);
    let (mut child, mut stdout, err) = spawn(
        "tscat",
        &args(&["--state", state.to_str().unwrap(), &srv.addr().to_string()]),
    );
    let mut got = vec![0u8; 100_000];
    stdout.read_exact(&mut got).unwrap();
    assert!(got == data[..100_000]);
    drop(stdout); // the reader goes away while tscat is blocked writing
    let status = wait_exit(&mut child);
    assert!(err.wait(|_, closed| closed));
    assert!(status.success(), "{status:?}: {}", err.text());
    assert!(err.text().is_empty(), "{}", err.text());
    let saved = std::fs::read_to_string(&state).unwrap();
    let offset: usize = saved
        .strip_prefix("tailsrv-consumer-state 1\noffset ")
        .and_then(|s| s.strip_suffix('\n'))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad state {saved:?}"));
    // What sat in the pipe when the reader closed it was never read: the position is
    // exactly what the reader took.
    assert_eq!(offset, 100_000);
}

#[test]
fn the_stream_socket_has_a_short_keepalive() {
    // A server that vanishes without a FIN is only noticed by keepalive probes. Loopback
    // cannot lose packets, so check the kernel's view of tscat's socket: /proc/net/tcp shows
    // timer 2 (keepalive) armed to fire within tscat's 10 s, not the system's 2 hours.
    let dir = tempdir();
    let path = dir.path().join("log");
    append(&path, b"x\n");
    let srv = tailsrv(&path, 0);
    let cat = Consumer::start("tscat", &args(&[&srv.addr().to_string()]));
    cat.wait_len(2);
    let server_port = format!("{:04X}", srv.addr().port());
    let client_timer = || -> Option<(u32, u64)> {
        let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
        table.lines().skip(1).find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (local, remote, timer) = (f[1], f[2], f[5]);
            let (kind, when) = timer.split_once(':')?;
            (remote.ends_with(&format!(":{server_port}"))
                && !local.ends_with(&format!(":{server_port}")))
            .then(|| (kind.parse().ok(), u64::from_str_radix(when, 16).ok()))
            .and_then(|(k, w)| Some((k?, w?)))
        })
    };
    // The timer is re-armed as the connection goes idle; wait for the idle state.
    assert!(
        eventually(PATIENCE, || matches!(client_timer(), Some((2, _)))),
        "no keepalive timer on tscat's socket: {:?}",
        client_timer()
    );
    let (_, when) = client_timer().unwrap();
    // In USER_HZ (100 per second).
    assert!(
        when <= 10 * 100,
        "keepalive fires in {when} ticks, over 10 s"
    );
}

// --- tscat --path: one file of a directory-mode tailsrv --------------------------------------

/// Starts tailsrv-indexer on the directory `root`, its indexes in `index_dir`.
fn dir_indexer(root: &Path, framing: &str, index_dir: &Path) -> Proc {
    let args: Vec<String> = vec![
        "-p".into(),
        "0".into(),
        "--bind".into(),
        "127.0.0.1".into(),
        "--framing".into(),
        framing.into(),
        "--index-dir".into(),
        index_dir.display().to_string(),
        root.display().to_string(),
    ];
    Proc::start("tailsrv-indexer", &args)
}

#[test]
fn tscat_path_follows_one_file_of_a_directory_across_restarts() {
    let dir = tempdir();
    let root = dir.path().join("served");
    std::fs::create_dir_all(root.join("sub dir")).unwrap();
    let path = root.join("sub dir/b.log");
    let mut all = random_bytes(200_000, 31);
    append(&path, &all);
    // A neighbour that must never leak into the stream.
    append(&root.join("other.log"), &random_bytes(50_000, 32));
    let srv = tailsrv(&root, 0);
    let port = srv.addr().port();
    let cat = Consumer::start(
        "tscat",
        &args(&["--path", "sub dir/b.log", &srv.addr().to_string()]),
    );
    cat.wait_len(all.len());

    let more = random_bytes(100_000, 33);
    append(&path, &more);
    all.extend_from_slice(&more);
    append(&root.join("other.log"), b"noise\n");
    drop(srv); // SIGKILL, possibly mid-send
    let more = random_bytes(70_000, 34);
    append(&path, &more);
    all.extend_from_slice(&more);
    let _srv = tailsrv(&root, port);
    cat.wait_len(all.len());

    cat.signal(Signal::TERM);
    let (status, out, err) = cat.finish();
    assert!(status.success(), "{status:?}: {err}");
    assert_eq!(out.len(), all.len(), "{err}");
    assert!(out == all, "output differs from the file");
    assert!(err.contains("reconnecting"), "{err}");
}

#[test]
fn tscat_path_from_message_asks_the_directory_indexer() {
    for framing in ["newline", "varint"] {
        let dir = tempdir();
        let root = dir.path().join("served");
        std::fs::create_dir_all(root.join("t")).unwrap();
        // Two files with different messages: the indexer must answer for the one named.
        let (other, _) = messages(framing, 500, 40);
        append(&root.join("t/x.log"), &other);
        let rel = "t/y z.log";
        let path = root.join(rel);
        let count = 80;
        let (mut data, starts) = messages(framing, 0, count);
        append(&path, &data);
        let ix = dir_indexer(&root, framing, &dir.path().join("indexes"));
        let srv = tailsrv(&root, 0);
        assert_eq!(
            ask_indexer(&ix, &format!("count {rel}")),
            count.to_string(),
            "{framing}"
        );
        let common = |extra: &[&str]| {
            let mut a = args(extra);
            a.extend(args(&[
                "-v",
                "--path",
                rel,
                "--indexer",
                &ix.addr().to_string(),
                "--framing",
                framing,
                &srv.addr().to_string(),
            ]));
            a
        };
        let mut cats = Vec::new();
        for n in [0, 17, count - 1, count] {
            let cat = Consumer::start("tscat", &common(&["--from-message", &n.to_string()]));
            cats.push((format!("--from-message {n}"), starts[n], cat));
        }
        cats.push((
            "--from-end".into(),
            data.len(),
            Consumer::start("tscat", &common(&["--from-end"])),
        ));
        for (what, from, cat) in &cats {
            cat.wait_len(data.len() - from);
            assert!(cat.output() == data[*from..], "{framing} {what}");
            // Where a relative start lands is fixed once tscat has asked and connected.
            cat.wait_stderr("connected", 1);
        }
        // They follow the file: one more message, appended in two pieces.
        let (more, _) = messages(framing, count, 1);
        append(&path, &more[..2]);
        append(&path, &more[2..]);
        data.extend_from_slice(&more);
        for (what, from, cat) in cats {
            cat.wait_len(data.len() - from);
            cat.signal(Signal::TERM);
            let (status, out, err) = cat.finish();
            assert!(status.success(), "{framing} {what}: {status:?} {err}");
            assert!(out == data[from..], "{framing} {what}");
        }
    }
}

#[test]
fn tscat_path_refusals_fail_clearly_and_are_not_retried() {
    let dir = tempdir();
    let root = dir.path().join("served");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join(".ignore"), b"*.secret\n").unwrap();
    append(&root.join("k.secret"), b"secret\n");
    append(&root.join("ok.log"), b"fine\n");
    let dir_srv = tailsrv(&root, 0);
    let file_srv = tailsrv(&root.join("ok.log"), 0);
    let ix = dir_indexer(&root, "newline", &dir.path().join("indexes"));
    let dir_addr = dir_srv.addr().to_string();
    let file_addr = file_srv.addr().to_string();
    let ix_addr = ix.addr().to_string();
    // Default retry policy (give up after 300 s): a refusal that asking again cannot change
    // must still end the run at once (the harness bounds it to PATIENCE).
    for (case, code, needles) in [
        (
            vec!["--path", "k.secret", &dir_addr],
            7,
            vec!["not-served: \"k.secret\": path is excluded by an .ignore file"],
        ),
        (
            vec!["--path", "../ok.log", &dir_addr],
            7,
            vec!["`..` is not allowed"],
        ),
        // The other mode: a directory needs --path, a single file takes none.
        (
            vec![&dir_addr],
            7,
            vec!["wrong-mode: this server serves a directory"],
        ),
        (
            vec!["--path", "ok.log", &file_addr],
            7,
            vec!["wrong-mode: this server serves a single file"],
        ),
        // The indexer refuses the same paths.
        (
            vec![
                "--path",
                "k.secret",
                "--from-message",
                "0",
                "--indexer",
                &ix_addr,
                &dir_addr,
            ],
            4,
            vec![
                "refused \"offset-of k.secret 0\"",
                "excluded by an .ignore file",
            ],
        ),
        (vec!["--path", "a\nb", &dir_addr], 2, vec!["--path must be"]),
    ] {
        let (status, out, err) = tscat_once(&args(&case));
        assert_eq!(status.code(), Some(code), "{case:?}: {err}");
        assert!(
            out.is_empty(),
            "{case:?}: a refusal reached stdout: {out:?}"
        );
        for needle in needles {
            assert!(err.contains(needle), "{case:?}: no {needle:?} in {err}");
        }
    }

    // One server that says no and one that serves the path: tscat fails over and streams.
    let other_root = dir.path().join("other");
    std::fs::create_dir_all(&other_root).unwrap();
    std::fs::write(other_root.join(".ignore"), b"ok.log\n").unwrap();
    append(&other_root.join("ok.log"), b"fine\n");
    let refusing = tailsrv(&other_root, 0);
    let list = format!("{},{dir_addr}", refusing.addr());
    let cat = Consumer::start("tscat", &args(&["--path", "ok.log", "--servers", &list]));
    cat.wait_len(5);
    cat.signal(Signal::TERM);
    let (status, out, err) = cat.finish();
    assert!(status.success(), "{status:?}: {err}");
    assert_eq!(out, b"fine\n");
    assert!(err.contains("excluded by an .ignore file"), "{err}");
}

// --- limits: --exit-at-end, --count, --bytes; checkpoints behind a pipe -----------------------

/// The offset in a state file.
fn saved_offset(state: &Path) -> usize {
    let saved = std::fs::read_to_string(state).unwrap();
    saved
        .strip_prefix("tailsrv-consumer-state 1\noffset ")
        .and_then(|s| s.strip_suffix('\n'))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad state {saved:?}"))
}

/// Runs `tscat ARGS | head -c N > out` through the shell; returns what head printed.
fn tscat_into_head(cat_args: &[String], n: usize, out: &Path) -> Vec<u8> {
    let quoted: Vec<String> = cat_args.iter().map(|a| format!("'{a}'")).collect();
    let script = format!(
        "'{}' --log-format text {} | head -c {n} > '{}'",
        bin("tscat").display(),
        quoted.join(" "),
        out.display()
    );
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .spawn()
        .expect("sh");
    let status = wait_exit(&mut child);
    assert!(status.success(), "{script}: {status:?}");
    std::fs::read(out).unwrap()
}

#[test]
fn a_pipe_reader_that_stops_never_causes_a_skip() {
    // `tscat --state S | head -c N`: head takes N bytes and exits; whatever tscat had pushed
    // into the pipe beyond that was never read. The next run must cover every byte after
    // what head printed.
    let dir = tempdir();
    let path = dir.path().join("log");
    let data = random_bytes(2_200_000, 40);
    append(&path, &data);
    let srv = tailsrv(&path, 0);
    let addr = srv.addr().to_string();
    let mut sizes: Vec<usize> = vec![1, 2, 100, 1000, 4095, 4096, 4097, 65_535, 65_536, 65_537];
    sizes.extend([
        100_000,
        131_072,
        250_000,
        262_144,
        300_001,
        524_288,
        999_999,
        1 << 20,
    ]);
    sizes.extend([1_500_000, 2_000_000]);
    assert_eq!(sizes.len(), 20);
    for n in sizes {
        let state = dir.path().join(format!("state-{n}"));
        let st = state.to_str().unwrap();
        let got = tscat_into_head(&args(&["--state", st, &addr]), n, &dir.path().join("out"));
        assert!(got == data[..n], "head -c {n}: not the file's first bytes");
        let saved = saved_offset(&state);
        assert!(
            saved <= n,
            "head -c {n}: the checkpoint {saved} passed what the reader took"
        );
        assert!(
            n - saved <= 64 << 10,
            "head -c {n}: the checkpoint {saved} repeats more than a pipe's worth"
        );
        let (status, rest, err) = tscat_once(&args(&["--state", st, "--exit-at-end", &addr]));
        assert!(status.success(), "{status:?}: {err}");
        assert!(
            rest == data[saved..],
            "head -c {n}: run 2 is not the file from {saved}"
        );
    }
}

#[test]
fn a_framed_pipe_reader_that_stops_resumes_at_a_message_it_did_not_finish() {
    let dir = tempdir();
    let path = dir.path().join("log");
    let (data, starts) = messages("u32be", 0, 3_000);
    append(&path, &data);
    let srv = tailsrv(&path, 0);
    let addr = srv.addr().to_string();
    for n in [3, 5_000, 70_000, 200_000, 700_000] {
        let state = dir.path().join(format!("state-{n}"));
        let st = state.to_str().unwrap();
        let cat_args = args(&["--state", st, "--framing", "u32be", &addr]);
        let got = tscat_into_head(&cat_args, n, &dir.path().join("out"));
        assert!(got == data[..n]);
        let saved = saved_offset(&state);
        assert!(starts.contains(&saved), "{saved} is not a message start");
        // The last message start at or before what head printed: the message head cut.
        let expected = starts[starts.partition_point(|&s| s <= n) - 1];
        assert_eq!(saved, expected, "head -c {n}");
        let mut again = cat_args.clone();
        again.push("--exit-at-end".into());
        let (status, rest, err) = tscat_once(&again);
        assert!(status.success(), "{status:?}: {err}");
        assert!(
            rest == data[saved..],
            "head -c {n}: run 2 is not the file from {saved}"
        );
    }
}

#[test]
fn exit_at_end_prints_what_is_there_and_exits() {
    let dir = tempdir();
    let path = dir.path().join("log");
    let state = dir.path().join("state");
    let st = state.to_str().unwrap();
    append(&path, b"a\nbb\nccc");
    let srv = tailsrv(&path, 0);
    let addr = srv.addr().to_string();

    // Raw bytes: everything, exit 0.
    let (status, out, err) = tscat_once(&args(&["--exit-at-end", &addr]));
    assert!(status.success(), "{status:?}: {err}");
    assert_eq!(out, b"a\nbb\nccc");

    // Whole messages only: the incomplete "ccc" is left for the next run.
    let framed = args(&[
        "--exit-at-end",
        "--framing",
        "newline",
        "--state",
        st,
        &addr,
    ]);
    let (status, out, err) = tscat_once(&framed);
    assert!(status.success(), "{status:?}: {err}");
    assert_eq!(out, b"a\nbb\n");
    assert_eq!(saved_offset(&state), 5);
    append(&path, b"c\nd\n");
    let (status, out, err) = tscat_once(&framed);
    assert!(status.success(), "{status:?}: {err}");
    assert_eq!(out, b"cccc\nd\n");
    assert_eq!(saved_offset(&state), 12);
    // At the end already: nothing, exit 0, state unchanged.
    let (status, out, err) = tscat_once(&framed);
    assert!(status.success(), "{status:?}: {err}");
    assert!(out.is_empty());
    assert_eq!(saved_offset(&state), 12);

    // An empty file, and a start past the end: nothing, exit 0.
    let empty = dir.path().join("empty");
    append(&empty, b"");
    let srv2 = tailsrv(&empty, 0);
    let (status, out, err) = tscat_once(&args(&["--exit-at-end", &srv2.addr().to_string()]));
    assert!(status.success(), "{status:?}: {err}");
    assert!(out.is_empty());
    let (status, out, err) = tscat_once(&args(&["--exit-at-end", "--from-byte", "100", &addr]));
    assert!(status.success(), "{status:?}: {err}");
    assert!(out.is_empty());

    // A file that keeps growing still ends the run: at its length when tscat started.
    let mut lines = Lines::new();
    let grow = dir.path().join("grow");
    append(&grow, &lines.more(5_000));
    let srv3 = tailsrv(&grow, 0);
    let before = std::fs::metadata(&grow).unwrap().len() as usize;
    let writer = Writer::start(grow.clone(), lines);
    let (status, out, err) = tscat_once(&args(&[
        "--exit-at-end",
        "--framing",
        "newline",
        &srv3.addr().to_string(),
    ]));
    let lines = writer.finish();
    assert!(status.success(), "{status:?}: {err}");
    assert!(
        out.len() >= before,
        "stopped before the end it started with"
    );
    assert!(lines.data.starts_with(&out), "not a prefix of the file");
    assert_eq!(out.last(), Some(&b'\n'), "ended inside a message");
}

#[test]
fn count_and_bytes_stop_exactly() {
    let dir = tempdir();
    let path = dir.path().join("log");
    let state = dir.path().join("state");
    let st = state.to_str().unwrap();
    let (data, starts) = messages("varint", 0, 400);
    append(&path, &data);
    let srv = tailsrv(&path, 0);
    let addr = srv.addr().to_string();

    // --count N: exactly N messages, then the next N from where the first run stopped.
    let count = args(&["--count", "17", "--framing", "varint", "--state", st, &addr]);
    for round in 0..3 {
        let (status, out, err) = tscat_once(&count);
        assert!(status.success(), "{status:?}: {err}");
        let (from, to) = (starts[round * 17], starts[(round + 1) * 17]);
        assert!(
            out == data[from..to],
            "round {round}: not messages {}..{}",
            round * 17,
            (round + 1) * 17
        );
        assert_eq!(saved_offset(&state), to);
    }
    // --bytes N with a framing: the whole messages that end within N bytes.
    let at = saved_offset(&state);
    let (status, out, err) = tscat_once(&args(&[
        "--bytes",
        "5000",
        "--framing",
        "varint",
        "--state",
        st,
        &addr,
    ]));
    assert!(status.success(), "{status:?}: {err}");
    let end = starts[starts.partition_point(|&s| s <= at + 5000) - 1];
    assert!(out == data[at..end], "--bytes 5000 from {at}");
    assert_eq!(saved_offset(&state), end);

    // --bytes N raw: exactly N bytes, from anywhere.
    let (status, out, err) = tscat_once(&args(&["--bytes", "12345", "--from-byte", "7", &addr]));
    assert!(status.success(), "{status:?}: {err}");
    assert!(out == data[7..7 + 12345]);

    // A limit beyond the file waits for it: --count 2 on a file that has one message.
    let small = dir.path().join("small");
    append(&small, b"one\n");
    let srv2 = tailsrv(&small, 0);
    let cat = Consumer::start(
        "tscat",
        &args(&[
            "--count",
            "2",
            "--framing",
            "newline",
            &srv2.addr().to_string(),
        ]),
    );
    cat.wait_len(4);
    append(&small, b"two\nthree\n");
    let (status, out, err) = cat.finish();
    assert!(status.success(), "{status:?}: {err}");
    assert_eq!(out, b"one\ntwo\n");

    // --count needs --framing: a usage error.
    let (status, out, err) = tscat_once(&args(&["--count", "2", &addr]));
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(out.is_empty());
    assert!(err.contains("--framing"), "{err}");
}

#[test]
fn bad_addresses_are_usage_errors_at_once() {
    let started = Instant::now();
    for (case, needle) in [
        (vec!["localhost"], "port is missing"),
        (vec!["127.0.0.1:notaport"], "not a port number"),
        (vec!["no-such-host.invalid:4321"], "cannot be resolved"),
        (vec!["--servers", "127.0.0.1:1,:4321"], "host is missing"),
        (
            vec!["--from-message", "1", "--indexer", "nowhere", "127.0.0.1:1"],
            "indexer \"nowhere\"",
        ),
    ] {
        let (status, out, err) = tscat_once(&args(&case));
        assert_eq!(status.code(), Some(2), "{case:?}: {err}");
        assert!(out.is_empty());
        assert!(err.contains(needle), "{case:?}: {err}");
    }
    let dir = tempdir();
    let replica = dir.path().join("replica");
    for server in ["localhost", "no-such-host.invalid:1"] {
        let (status, _, err) =
            Consumer::start("tsmirror", &args(&[server, replica.to_str().unwrap()])).finish();
        assert_eq!(status.code(), Some(2), "{server}: {err}");
    }
    assert!(!replica.exists(), "a refused tsmirror created its file");
    assert!(started.elapsed() < PATIENCE, "not at once");
}

#[test]
fn tsmirror_creates_its_file_only_once_a_server_accepted() {
    let dir = tempdir();
    let served = dir.path().join("served");
    std::fs::create_dir(&served).unwrap();
    append(&served.join("a.log"), b"x\n");
    // A directory-mode server refuses a single-file request for good: exit 4, no file.
    let dir_srv = tailsrv(&served, 0);
    let replica = dir.path().join("replica");
    let rep = replica.to_str().unwrap();
    let (status, _, err) =
        Consumer::start("tsmirror", &args(&[&dir_srv.addr().to_string(), rep])).finish();
    assert_eq!(status.code(), Some(4), "{err}");
    assert!(!replica.exists(), "a refused tsmirror left a file");

    // Nobody listening: it retries, and no file appears meanwhile.
    let dead = format!("127.0.0.1:{}", dead_port());
    let mirror = Consumer::start("tsmirror", &args(&[&dead, rep]));
    mirror.wait_stderr("cannot connect", 2);
    assert!(
        !replica.exists(),
        "an unconnected tsmirror created its file"
    );
    mirror.signal(Signal::TERM);
    let (status, _, err) = mirror.finish();
    assert!(status.success(), "{status:?}: {err}");
    assert!(!replica.exists());

    // An empty source that a server accepts: the (empty) replica exists.
    let source = dir.path().join("source");
    append(&source, b"");
    let srv = tailsrv(&source, 0);
    let mirror = Consumer::start("tsmirror", &args(&[&srv.addr().to_string(), rep]));
    mirror.wait_stderr("created the replica", 1);
    assert!(replica.exists());
    append(&source, b"hello\n");
    assert!(eventually(PATIENCE, || std::fs::read(&replica).unwrap() == b"hello\n"));
    mirror.signal(Signal::TERM);
    let (status, _, err) = mirror.finish();
    assert!(status.success(), "{status:?}: {err}");
}

#[test]
fn tsmirror_cuts_a_zero_filled_tail_left_by_a_crash() {
    let dir = tempdir();
    let source = dir.path().join("source");
    let data = random_bytes(300_000, 50);
    append(&source, &data);
    let srv = tailsrv(&source, 0);
    let replica = dir.path().join("replica");
    let rep = replica.to_str().unwrap();
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len() as usize).unwrap_or(0);
    // What a crash can leave: the size covers blocks never written (zeros), at the end, or
    // before a block that was written.
    let mut zero_tail = data[..100_000].to_vec();
    zero_tail.extend_from_slice(&[0u8; 10_000]);
    let mut zero_hole = data[..200_704].to_vec(); // 49 * 4096
    zero_hole.extend_from_slice(&[0u8; 8192]);
    zero_hole.extend_from_slice(&data[200_704 + 8192..230_000]);
    for (case, start) in [("tail", zero_tail), ("hole", zero_hole)] {
        std::fs::write(&replica, &start).unwrap();
        let mirror = Consumer::start("tsmirror", &args(&[&srv.addr().to_string(), rep]));
        mirror.wait_stderr("zero bytes at the end", 1);
        assert!(
            eventually(PATIENCE, || len(&replica) >= data.len()),
            "{case}"
        );
        mirror.signal(Signal::TERM);
        let (status, _, err) = mirror.finish();
        assert!(status.success(), "{case}: {status:?}: {err}");
        let copy = std::fs::read(&replica).unwrap();
        assert_eq!(copy.len(), data.len(), "{case}: {err}");
        assert!(copy == data, "{case}: the replica differs from the source");
    }
    // A replica without zeros is left alone (nothing cut, nothing said).
    let mirror = Consumer::start("tsmirror", &args(&[&srv.addr().to_string(), rep]));
    mirror.wait_stderr("mirroring from the replica's length", 1);
    mirror.signal(Signal::TERM);
    let (status, _, err) = mirror.finish();
    assert!(status.success(), "{status:?}: {err}");
    assert!(!err.contains("zero bytes"), "{err}");
    assert!(std::fs::read(&replica).unwrap() == data);
}
