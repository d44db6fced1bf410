//! tailsrv-collator writing a segmented log (issue #19) end to end: the real binary, real TCP
//! on 127.0.0.1, logs in temp directories.
//!
//! Ground truth never comes from the collator's code: the tests read the log directory with
//! their own parsing of segment names, and the oracle is the concatenation of everything
//! ever acknowledged, in acknowledged order. Every acknowledged message must be where its
//! acknowledgement says for as long as retention keeps it, every byte of the log must equal
//! the oracle's, and acknowledgements must tile the log with no gap and no overlap (a lost or
//! duplicated request would leave one).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use tests::*;

const BIN: &str = "tailsrv-collator";

/// One segment as the test reads it.
struct Seg {
    base: u64,
    first: u64,
    data: Vec<u8>,
}

/// The test's own reading of a segmented log, for when no collator is writing it: segments
/// by their `BASE-FIRST.log` names (20 digits each), checked to be contiguous.
fn read_log(dir: &Path) -> Vec<Seg> {
    let marker = std::fs::read_to_string(dir.join("tailsrv-log")).expect("the log's marker");
    assert!(
        marker.starts_with("tailsrv segmented log 1\n") && marker.contains("framing newline\n"),
        "marker {marker:?}"
    );
    let mut segs: Vec<Seg> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().ok()?;
            let stem = name.strip_suffix(".log")?;
            let (b, f) = stem.split_once('-')?;
            (b.len() == 20 && f.len() == 20).then_some(())?;
            Some(Seg {
                base: b.parse().ok()?,
                first: f.parse().ok()?,
                // Retention (still running) may delete the oldest meanwhile: not a segment.
                data: std::fs::read(dir.join(&name)).ok()?,
            })
        })
        .collect();
    segs.sort_by_key(|s| s.base);
    assert!(!segs.is_empty(), "no segment in {}", dir.display());
    for w in segs.windows(2) {
        assert_eq!(
            w[0].base + w[0].data.len() as u64,
            w[1].base,
            "the sealed segment at {} does not end where the next begins",
            w[0].base
        );
        assert!(w[0].first <= w[1].first);
    }
    segs
}

/// An acknowledged request: where it is, and its bytes as framed in the log.
#[derive(Clone, Debug)]
struct Acked {
    offset: u64,
    msgno: u64,
    count: u64,
    bytes: Vec<u8>,
}

/// Every acknowledged message still in the log (at or past the oldest segment's base) is
/// where its acknowledgement says, in one segment, byte for byte.
fn check_acked(segs: &[Seg], acked: &[Acked]) {
    for a in acked.iter().filter(|a| a.offset >= segs[0].base) {
        let i = segs.partition_point(|s| s.base <= a.offset) - 1;
        let s = &segs[i];
        let at = (a.offset - s.base) as usize;
        assert!(
            at + a.bytes.len() <= s.data.len(),
            "the request acknowledged at {} ({} bytes) is not all in the segment at {} \
             ({} bytes)",
            a.offset,
            a.bytes.len(),
            s.base,
            s.data.len()
        );
        assert_eq!(
            &s.data[at..at + a.bytes.len()],
            &a.bytes[..],
            "at {}",
            a.offset
        );
    }
}

/// The oracle: acknowledgements tile the log from byte 0 and message 0, every segment starts
/// at a request (never inside a batch) with that request's message number, and the log's
/// bytes are the oracle's from the oldest segment on. Returns the number of segments.
fn check_oracle(dir: &Path, acked: &[Acked]) -> usize {
    let mut acked = acked.to_vec();
    acked.sort_by_key(|a| a.offset);
    let (mut end, mut count) = (0u64, 0u64);
    let mut oracle = Vec::new();
    for a in &acked {
        assert_eq!(
            (a.offset, a.msgno),
            (end, count),
            "acknowledgements leave a gap or overlap"
        );
        end += a.bytes.len() as u64;
        count += a.count;
        oracle.extend_from_slice(&a.bytes);
    }
    let segs = read_log(dir);
    for s in &segs {
        let n = if s.base == end {
            count
        } else {
            let i = acked
                .binary_search_by_key(&s.base, |a| a.offset)
                .unwrap_or_else(|_| panic!("the segment at {} starts inside a request", s.base));
            acked[i].msgno
        };
        assert_eq!(
            s.first, n,
            "the segment at {} names the wrong message",
            s.base
        );
    }
    let start = segs[0].base as usize;
    let on_disk: Vec<u8> = segs.iter().flat_map(|s| s.data.iter().copied()).collect();
    assert_eq!(
        on_disk.len() + start,
        oracle.len(),
        "the log ends at {}, the acknowledgements at {}",
        on_disk.len() + start,
        oracle.len()
    );
    assert!(
        on_disk == oracle[start..],
        "the log's bytes differ from the oracle"
    );
    check_acked(&segs, &acked);
    segs.len()
}

/// An idempotent producer: its sequence, the request it has not had an answer to, and what
/// was acknowledged.
struct Producer {
    id: usize,
    seq: u64,
    /// Sent (maybe written) and unanswered: resent first, with the same sequence number.
    pending: Option<(u64, Vec<Vec<u8>>)>,
    acked: Vec<Acked>,
    /// Answers that were not `ok` (the test fails on any, with the collator's log).
    refused: Vec<String>,
}

enum Answer {
    Ok(u64, u64, u64),
    /// The collator is gone (killed): no answer.
    Gone,
    /// Anything but `ok`: the answer.
    Refused(String),
}

impl Producer {
    fn new(id: usize) -> Producer {
        Producer {
            id,
            seq: 1,
            pending: None,
            acked: Vec::new(),
            refused: Vec::new(),
        }
    }

    /// One to five payloads for request `seq`, of 20 to ~300 bytes, naming themselves.
    fn payloads(&self, seq: u64) -> Vec<Vec<u8>> {
        let n = [1, 1, 3, 1, 5, 2][(seq % 6) as usize];
        (0..n)
            .map(|i| {
                let mut p = format!("p{}s{seq}m{i}:", self.id).into_bytes();
                let len = 10 + (seq as usize * 37 + i * 101 + self.id * 13) % 290;
                p.extend((0..len).map(|j| b'a' + ((j + self.id + seq as usize) % 26) as u8));
                p
            })
            .collect()
    }

    fn request(&self, seq: u64, payloads: &[Vec<u8>]) -> (Vec<u8>, Vec<u8>) {
        let mut body = Vec::new();
        for p in payloads {
            body.extend_from_slice(p);
            body.push(b'\n');
        }
        let mut req = if payloads.len() == 1 {
            format!("msg {} id p{} seq {seq}\n", body.len() - 1, self.id).into_bytes()
        } else {
            format!(
                "batch {} {} id p{} seq {seq}\n",
                payloads.len(),
                body.len(),
                self.id
            )
            .into_bytes()
        };
        if payloads.len() == 1 {
            req.extend_from_slice(&body[..body.len() - 1]);
        } else {
            req.extend_from_slice(&body);
        }
        (req, body)
    }

    fn ask(conn: &mut (BufReader<TcpStream>, TcpStream), req: &[u8]) -> Answer {
        if conn.1.write_all(req).is_err() {
            return Answer::Gone;
        }
        let mut line = String::new();
        match conn.0.read_line(&mut line) {
            Ok(0) | Err(_) => return Answer::Gone,
            Ok(_) => {}
        }
        let Some(ok) = line.trim_end().strip_prefix("ok ") else {
            return Answer::Refused(line);
        };
        let f: Vec<u64> = ok.split(' ').map(|n| n.parse().unwrap()).collect();
        Answer::Ok(f[0], f[1], f[2])
    }

    /// Sends requests (the pending one first) until none is pending and `requests` are
    /// acknowledged in all,
    /// `deadline` passes, or the collator is gone. Every seventh request is sent twice: the
    /// retry must be answered with the first one's position and write nothing.
    fn run(&mut self, addr: SocketAddr, requests: usize, deadline: Instant) {
        let Ok(s) = TcpStream::connect(addr) else {
            return;
        };
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut conn = (BufReader::new(s.try_clone().unwrap()), s);
        while (self.pending.is_some() || self.acked.len() < requests) && Instant::now() < deadline {
            let (seq, payloads) = match self.pending.take() {
                Some(p) => p,
                None => {
                    let seq = self.seq;
                    self.seq += 1;
                    (seq, self.payloads(seq))
                }
            };
            let (req, bytes) = self.request(seq, &payloads);
            self.pending = Some((seq, payloads));
            let (offset, msgno, count) = match Producer::ask(&mut conn, &req) {
                Answer::Ok(o, m, c) => (o, m, c),
                Answer::Gone => return,
                Answer::Refused(r) => {
                    self.refused.push(format!("seq {seq}: {r}"));
                    return;
                }
            };
            self.pending = None;
            assert_eq!(count, self.payloads(seq).len() as u64);
            let a = Acked {
                offset,
                msgno,
                count,
                bytes,
            };
            if seq % 7 == 0 {
                match Producer::ask(&mut conn, &req) {
                    Answer::Ok(o, m, c) => assert_eq!(
                        (o, m, c),
                        (offset, msgno, count),
                        "p{} seq {seq}: a retry was answered with another position",
                        self.id
                    ),
                    Answer::Gone => {
                        self.acked.push(a);
                        return;
                    }
                    Answer::Refused(r) => {
                        self.refused.push(format!("seq {seq} (a retry): {r}"));
                        self.acked.push(a);
                        return;
                    }
                }
            }
            self.acked.push(a);
        }
    }
}

/// Runs `producers` at once against `addr`, each until it has `requests` acknowledged,
/// `deadline`, or the collator is gone.
fn run_all(
    producers: Vec<Producer>,
    addr: SocketAddr,
    requests: usize,
    deadline: Instant,
) -> Vec<Producer> {
    let threads: Vec<_> = producers
        .into_iter()
        .map(|mut p| {
            std::thread::spawn(move || {
                p.run(addr, requests, deadline);
                p
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

fn all_acked(producers: &[Producer]) -> Vec<Acked> {
    producers
        .iter()
        .flat_map(|p| p.acked.iter().cloned())
        .collect()
}

fn collator(log: &Path, extra: &[&str]) -> Proc {
    tests::collator(log).args(extra).start()
}

/// Eight idempotent producers through the collator with 64 KiB segments, in `--sync write`
/// with retention by bytes and in `--sync data` with rolling and retention by age: the log
/// rolls many times, every acknowledged message is where its acknowledgement says, every
/// byte equals the oracle, retention keeps what it says, and `LOG.synced` reaches the end.
#[test]
fn eight_idempotent_producers_roll_and_retain() {
    let dir = tempdir();
    for (name, flags) in [
        (
            "bytes",
            &[
                "--sync",
                "write",
                "--segment-bytes",
                "64K",
                "--retain-bytes",
                "256K",
            ][..],
        ),
        (
            "age",
            &[
                "--sync",
                "data",
                "--segment-bytes",
                "64K",
                "--segment-ms",
                "300",
                "--retain-ms",
                "1500",
            ][..],
        ),
    ] {
        let log = dir.path().join(name);
        let c = collator(&log, flags);
        let started = Instant::now();
        let producers = run_all(
            (0..8).map(Producer::new).collect(),
            c.addr(),
            250,
            started + Duration::from_secs(120),
        );
        for p in &producers {
            assert!(p.refused.is_empty(), "{name}: p{}: {:?}", p.id, p.refused);
            assert_eq!(p.acked.len(), 250, "{name}: p{} was not answered", p.id);
        }
        let acked = all_acked(&producers);
        let total: u64 = acked.iter().map(|a| a.bytes.len() as u64).sum();
        let sealed = |segs: &[Seg]| -> u64 {
            segs[..segs.len() - 1]
                .iter()
                .map(|s| s.data.len() as u64)
                .sum()
        };
        if name == "bytes" {
            // Retention runs after each roll: the sealed segments end up within the limit.
            assert!(
                eventually(PATIENCE, || sealed(&read_log(&log)) <= 256 << 10),
                "{name}: retention kept {} sealed bytes",
                sealed(&read_log(&log))
            );
        } else {
            // Idle past --retain-ms: every sealed segment goes, the active one stays.
            assert!(
                eventually(PATIENCE, || read_log(&log).len() == 1),
                "{name}: {} segments left",
                read_log(&log).len()
            );
            assert_eq!(synced(&log), total, "{name}: LOG.synced is not the end");
        }
        let segs = read_log(&log);
        assert!(segs[0].base > 0, "{name}: retention deleted nothing");
        let n = check_oracle(&log, &acked);
        eprintln!(
            "{name}: {} requests, {total} bytes in {:.1}s; the log starts at byte {} with {n} \
             segments",
            acked.len(),
            started.elapsed().as_secs_f64(),
            segs[0].base
        );
        assert!(
            c.log.text().matches("rolled to a new segment").count() >= 8,
            "{name}: too few rolls"
        );
        drop(c);
        // A restart reads only the active segment and goes on at the same global offsets.
        let c = collator(&log, flags);
        let mut more = run_all(
            vec![Producer::new(99)],
            c.addr(),
            5,
            Instant::now() + PATIENCE,
        );
        let mut acked = acked;
        acked.append(&mut more[0].acked);
        check_oracle(&log, &acked);
    }
}

/// A collator started with `fault` in its environment (or none), on `port` (0: any), its
/// log collected here; it may die before listening (a fault point at start). Returns it and
/// its address once listening, or `None` if it died first.
fn start_faulty(
    log: &Path,
    port: u16,
    flags: &[&str],
    fault: Option<&str>,
) -> (Proc, Arc<Mutex<String>>, Option<SocketAddr>) {
    let mut cmd = Command::new(bin(BIN));
    cmd.args(["-p", &port.to_string(), "--bind", "127.0.0.1"])
        .args(flags)
        .arg(log)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(f) = fault {
        cmd.env("TAILSRV_COLLATOR_FAULT", f);
    }
    let mut child = cmd.spawn().unwrap();
    let text = Arc::new(Mutex::new(String::new()));
    let mut stderr = child.stderr.take().unwrap();
    let t = text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stderr.read(&mut buf) {
            t.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let placeholder: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let mut p = Proc::adopt(child, placeholder);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let found = text
            .lock()
            .unwrap()
            .split("listening on ")
            .nth(1)
            .map(|rest| {
                rest.chars()
                    .take_while(|c| !c.is_whitespace() && *c != '"')
                    .collect::<String>()
            });
        if let Some(addr) = found.and_then(|a| a.parse().ok()) {
            return (p, text, Some(addr));
        }
        if p.wait_exit(Duration::from_millis(20)).is_some() {
            return (p, text, None);
        }
        assert!(
            Instant::now() < deadline,
            "the collator neither listened nor exited: {}",
            text.lock().unwrap()
        );
    }
}

/// `kill -9` at every step of a roll and of a deletion (the collator's test-only fault
/// points), 25 rounds, in `--sync write` and `--sync data`, with four idempotent producers
/// retrying what was not answered: after each kill the log is consistent on disk (contiguous
/// segments, every acknowledged message in place), the restart accepts it, and at the end no
/// acknowledged message is lost, none is duplicated, and every byte equals the oracle.
#[test]
fn kill_9_at_each_step_of_a_roll_and_a_deletion() {
    const STEPS: [&str; 5] = [
        "roll-before-create",
        "roll-after-create",
        "roll-after-write",
        "delete-before-unlink",
        "delete-after-unlink",
    ];
    let dir = tempdir();
    let log = dir.path().join("log");
    let mut producers: Vec<Producer> = (0..4).map(Producer::new).collect();
    let mut port = 0;
    let started = Instant::now();
    let mut at_start = 0;
    let mut previous = String::new();
    for round in 0..25 {
        let step = STEPS[round % STEPS.len()];
        let fault = format!("{step}:{}", 1 + (round / STEPS.len()) % 3);
        let sync = if round % 2 == 0 { "write" } else { "data" };
        let flags = [
            "--sync",
            sync,
            "--segment-bytes",
            "4K",
            "--retain-bytes",
            "12K",
        ];
        let (mut c, text, addr) = start_faulty(&log, port, &flags, Some(&fault));
        if let Some(addr) = addr {
            port = addr.port();
            producers = run_all(producers, addr, usize::MAX, Instant::now() + PATIENCE);
        } else {
            at_start += 1;
        }
        let status = c
            .wait_exit(PATIENCE)
            .expect("the fault point was never reached");
        // The log's last lines may still be on their way through the pipe.
        let reached = format!("fault point {step} reached");
        let seen = eventually(PATIENCE, || text.lock().unwrap().contains(&reached));
        let text = text.lock().unwrap().clone();
        let refused: Vec<_> = producers.iter().flat_map(|p| &p.refused).collect();
        assert!(
            refused.is_empty(),
            "round {round} ({fault}, --sync {sync}): {refused:?}\nits log:\n{text}\nthe \
             round before's:\n{previous}"
        );
        previous = text.clone();
        assert_eq!(status.signal(), Some(9), "round {round} ({fault}): {text}");
        assert!(seen, "round {round} ({fault}): {text}");
        // Consistent on disk as the kill left it.
        check_acked(&read_log(&log), &all_acked(&producers));
    }
    // The last restart: everything unanswered is retried and answered.
    let (mut c, _, addr) = start_faulty(&log, port, &["--segment-bytes", "4K"], None);
    let addr = addr.expect("the last collator listens");
    let n = all_acked(&producers).len() / producers.len() + 3;
    producers = run_all(producers, addr, n, Instant::now() + PATIENCE);
    for p in &producers {
        assert!(
            p.pending.is_none(),
            "p{} still has a request unanswered",
            p.id
        );
    }
    c.signal(Signal::TERM);
    assert!(c.wait_exit(PATIENCE).is_some_and(|s| s.success()));
    let acked = all_acked(&producers);
    let segs = check_oracle(&log, &acked);
    eprintln!(
        "25 kills ({at_start} at start-up) in {:.1}s: {} requests acknowledged, {segs} \
         segments left",
        started.elapsed().as_secs_f64(),
        acked.len()
    );
}

/// Pointing the collator at the wrong thing is refused with a clear reason: a plain file
/// with `--segment-bytes`, a non-empty directory that is not a segmented log, a segmented log
/// with another `--framing` than its marker's, or `--segment-*` with directory mode.
#[test]
fn wrong_targets_are_refused() {
    let dir = tempdir();
    let file = dir.path().join("plain");
    std::fs::write(&file, b"a\n").unwrap();
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("x"), b"x").unwrap();
    let log = dir.path().join("log");
    drop(collator(&log, &["--segment-bytes", "1M"]));
    let jdir = dir.path().join("j");
    for (args, why) in [
        (
            vec!["--segment-bytes", "1M", file.to_str().unwrap()],
            "is a plain file",
        ),
        (
            vec!["--retain-ms", "10", other.to_str().unwrap()],
            "not a segmented log",
        ),
        (
            vec!["--framing", "u32be", log.to_str().unwrap()],
            "holds newline messages",
        ),
        (
            vec![
                "--segment-bytes",
                "1M",
                "--journal-dir",
                jdir.to_str().unwrap(),
                other.to_str().unwrap(),
            ],
            "not directory mode",
        ),
    ] {
        let mut all = vec!["-p", "0", "--bind", "127.0.0.1"];
        all.extend(args);
        let mut p = Proc::spawn(BIN, &all);
        let status = p.wait_exit(PATIENCE).expect("exits");
        assert!(!status.success(), "{all:?}");
        assert!(
            p.log.wait_for(why, PATIENCE).is_some(),
            "{all:?}: {}",
            p.log.text()
        );
    }
    // The log was not touched: one empty segment, and the file and directory as they were.
    assert_eq!(read_log(&log).len(), 1);
    assert_eq!(std::fs::read(&file).unwrap(), b"a\n");
}

/// What a power loss in `--sync write` can leave (issue #19): the sealer had not synced the
/// last sealed segment when the power went, so it is shorter than its successor's name says
/// (made here by truncating it, as the lost page cache would). `--sync write` (whose sealed
/// segments are synced off the writer's path) cuts the log at the short segment's end,
/// deletes the later segments, and appends from there at the right offsets; `--sync data`
/// (which never rolls before the sync) refuses the log as inconsistent and changes nothing.
#[test]
fn short_sealed_segment_is_cut_in_write_mode_and_refused_in_data_mode() {
    let dir = tempdir();
    let log = dir.path().join("log");
    let lines: Vec<u8> = (0..2000)
        .flat_map(|i| format!("line {i:05} of the first run\n").into_bytes())
        .collect();
    let c = collator(&log, &["--segment-bytes", "8K", "--sync", "write"]);
    let addr = c.addr().to_string();
    // One tswrite per 200 lines: each a write group of its own (group commit would merge a
    // pipelined run into a few groups bigger than a segment).
    for chunk in lines.chunks(200 * 28) {
        let (status, _, err) = tests::tswrite([&addr]).input(chunk.to_vec()).run();
        assert!(status.success(), "tswrite: {err}");
    }
    drop(c);
    let segs = read_log(&log);
    assert!(
        segs.len() >= 4,
        "{} segments: the log did not roll",
        segs.len()
    );
    let all: Vec<u8> = segs.iter().flat_map(|s| s.data.clone()).collect();
    assert_eq!(all, lines);
    // The second-to-last sealed segment loses its last 100 bytes (mid-line).
    let victim = &segs[segs.len() - 3];
    let name = format!("{:020}-{:020}.log", victim.base, victim.first);
    let cut_at = victim.base + victim.data.len() as u64 - 100;
    std::fs::OpenOptions::new()
        .write(true)
        .open(log.join(&name))
        .unwrap()
        .set_len(victim.data.len() as u64 - 100)
        .unwrap();
    let before: Vec<_> = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();

    let mut p = Proc::spawn(
        BIN,
        &[
            "-p",
            "0",
            "--bind",
            "127.0.0.1",
            "--segment-bytes",
            "8K",
            "--sync",
            "data",
            log.to_str().unwrap(),
        ],
    );
    let status = p.wait_exit(PATIENCE).expect("exits");
    assert!(!status.success());
    assert!(
        p.log
            .wait_for("must end where the next begins", PATIENCE)
            .is_some(),
        "{}",
        p.log.text()
    );
    let after: Vec<_> = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after, "--sync data changed the directory");

    let c = collator(&log, &["--segment-bytes", "8K", "--sync", "write"]);
    assert!(
        c.log
            .wait_for("its unsynced tail was lost", PATIENCE)
            .is_some(),
        "{}",
        c.log.text()
    );
    let more: Vec<u8> = (0..300)
        .flat_map(|i| format!("line {i:05} after the cut\n").into_bytes())
        .collect();
    let (status, out, err) = tests::tswrite([c.addr().to_string()])
        .input(more.clone())
        .run();
    assert!(status.success(), "tswrite: {err}");
    drop(c);
    // The restart check cut the torn group too (back to the last whole write group the
    // journal describes, at most one 200-line run before the cut): the log is the first
    // run's bytes up to there, then the new lines, acknowledged from there.
    let segs = read_log(&log);
    let all: Vec<u8> = segs.iter().flat_map(|s| s.data.clone()).collect();
    let kept = all.len() - more.len();
    assert!(
        kept as u64 <= cut_at && cut_at - (kept as u64) < 200 * 28 && kept.is_multiple_of(28),
        "kept {kept} bytes of the first run, cut at {cut_at}; segments {:?}",
        segs.iter()
            .map(|s| (s.base, s.data.len()))
            .collect::<Vec<_>>()
    );
    assert!(
        all[..kept] == lines[..kept] && all[kept..] == more[..],
        "the log after the cut is not the kept lines then the new ones"
    );
    let first_ack = String::from_utf8_lossy(&out);
    let first_offset: u64 = first_ack
        .split_whitespace()
        .next()
        .and_then(|o| o.parse().ok())
        .unwrap_or_else(|| panic!("tswrite printed {first_ack:?}"));
    assert_eq!(
        first_offset, kept as u64,
        "the first new line's acknowledged offset"
    );
}
