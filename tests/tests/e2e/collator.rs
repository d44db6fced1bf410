//! tailsrv-collator end to end: the real binaries (collator, indexer, tailsrv, tswrite), real
//! TCP on 127.0.0.1, files in temp directories.
//!
//! Ground truth never comes from the collator's code: payloads are generated here, and the
//! file is checked with the tests' own framing scanner (`tests::framed`): every acknowledged
//! message must be in the file exactly once, starting at its acknowledged offset, as the
//! message with its acknowledged number.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use tests::framed::{self, batch_request, msg_request, FRAMINGS};
use tests::*;

/// A collator writing `file` on a free port, with `extra` flags.
fn collate(file: &Path, extra: &[&str]) -> Proc {
    collator(file).args(extra).start()
}

/// A producer connection: requests out, answer lines in.
type Producer = LineClient;

/// `ok OFFSET MSGNO COUNT` as numbers.
fn ok(line: &str) -> (u64, u64, u64) {
    let f: Vec<u64> = line
        .strip_prefix("ok ")
        .unwrap_or_else(|| panic!("not an ok answer: {line:?}"))
        .split(' ')
        .map(|n| n.parse().unwrap())
        .collect();
    (f[0], f[1], f[2])
}

/// A payload that names itself and never holds a delimiter (`framed::encode` would alter it).
fn payload(producer: usize, i: usize, len: usize) -> Vec<u8> {
    let mut p = format!("p{producer}m{i}:").into_bytes();
    p.extend((0..len).map(|j| b'a' + ((i * 7 + j * 13 + producer) % 26) as u8));
    p
}

/// Checks every acknowledged message against the file: at its offset, as its number, and the
/// file holds nothing else.
fn check_file(framing: &str, data: &[u8], acked: &[(u64, u64, Vec<u8>)]) {
    let (starts, end) = framed::naive_starts(framing, data);
    assert_eq!(
        end,
        data.len() as u64,
        "{framing}: the file ends inside a message"
    );
    assert_eq!(
        starts.len(),
        acked.len(),
        "{framing}: the file holds {} messages, {} were acknowledged",
        starts.len(),
        acked.len()
    );
    let mut seen = vec![false; starts.len()];
    for (offset, msgno, p) in acked {
        let n = *msgno as usize;
        assert!(!seen[n], "{framing}: message {n} acknowledged twice");
        seen[n] = true;
        assert_eq!(
            starts[n], *offset,
            "{framing}: message {n} is not at its offset"
        );
        let mut want = Vec::new();
        framed::encode(framing, p, &mut want);
        let at = *offset as usize;
        assert_eq!(
            &data[at..at + want.len()],
            &want[..],
            "{framing}: message {n}"
        );
    }
}

/// Four producers at once (single messages pipelined, batches, line mode, tswrite), on a
/// file that an indexer and tailsrv follow: every acknowledged message is in the file once,
/// where it was acknowledged; the indexer's `offset-of` agrees; tailsrv streams the file.
#[test]
fn concurrent_producers_every_framing() {
    for framing in FRAMINGS {
        let dir = tempdir();
        let file = dir.path().join("log");
        let c = collate(&file, &["--framing", framing, "--sync", "data"]);
        let ix = indexer(&file)
            .args(["--framing", framing, "--stride", "3"])
            .start();
        let ts = tailsrv(&file).start();
        let mut follower = ts.request("0");
        const N: usize = 150;
        let addr = c.addr();
        let singles = std::thread::spawn(move || {
            let mut p = Producer::connect(addr);
            let all: Vec<Vec<u8>> = (0..N).map(|i| payload(0, i, i % 50 + 1)).collect();
            let mut wire = Vec::new();
            for m in &all {
                wire.extend_from_slice(&msg_request(m));
            }
            p.send(&wire);
            all.into_iter()
                .map(|m| {
                    let (o, n, c) = ok(&p.line());
                    assert_eq!(c, 1);
                    (o, n, m)
                })
                .collect::<Vec<_>>()
        });
        let fr = framing.to_owned();
        let batches = std::thread::spawn(move || {
            let mut p = Producer::connect(addr);
            let mut out = Vec::new();
            for b in 0..N / 10 {
                let ms: Vec<Vec<u8>> = (0..10).map(|i| payload(1, b * 10 + i, 200 + i)).collect();
                let (o, n, c) = ok(&p.request(&batch_request(&fr, &ms)));
                assert_eq!(c, 10);
                let mut off = o;
                for (i, m) in ms.into_iter().enumerate() {
                    let mut enc = Vec::new();
                    framed::encode(&fr, &m, &mut enc);
                    out.push((off, n + i as u64, m));
                    off += enc.len() as u64;
                }
            }
            out
        });
        let fr = framing.to_owned();
        let lines = std::thread::spawn(move || {
            let mut p = Producer::connect(addr);
            let ms: Vec<Vec<u8>> = (0..N).map(|i| payload(2, i, i % 30 + 1)).collect();
            let mut wire = b"lines\n".to_vec();
            for m in &ms {
                wire.extend_from_slice(m);
                wire.push(b'\n');
            }
            p.send(&wire);
            p.shutdown_write();
            let mut out = Vec::new();
            let mut next = 0;
            while next < ms.len() {
                let (o, n, c) = ok(&p.line());
                let mut off = o;
                for i in 0..c {
                    let m = ms[next].clone();
                    let mut enc = Vec::new();
                    framed::encode(&fr, &m, &mut enc);
                    out.push((off, n + i, m));
                    off += enc.len() as u64;
                    next += 1;
                }
            }
            out
        });
        // tswrite: lines on stdin, `BYTE MSG` per line on stdout.
        let ms: Vec<Vec<u8>> = (0..N).map(|i| payload(3, i, i % 40 + 1)).collect();
        let mut input = Vec::new();
        for m in &ms {
            input.extend_from_slice(m);
            input.push(b'\n');
        }
        let (status, printed, err) = tswrite([&addr.to_string(), "--id", "tw"])
            .input(input)
            .run();
        assert!(status.success(), "tswrite: {status:?}; stderr:\n{err}");
        let mut acked: Vec<(u64, u64, Vec<u8>)> = String::from_utf8(printed)
            .unwrap()
            .lines()
            .zip(ms)
            .map(|(l, m)| {
                let (b, n) = l.split_once(' ').unwrap();
                (b.parse().unwrap(), n.parse().unwrap(), m)
            })
            .collect();
        assert_eq!(acked.len(), N);
        for t in [singles, batches, lines] {
            acked.extend(t.join().unwrap());
        }
        let data = std::fs::read(&file).unwrap();
        check_file(framing, &data, &acked);
        // The indexer numbers them the same way.
        let mut q = LineClient::new(&ix);
        q.wait_count("count", acked.len() as u64);
        let asks: Vec<String> = acked.iter().map(|a| format!("offset-of {}", a.1)).collect();
        let answers = q.ask_all(&asks);
        for (a, ans) in acked.iter().zip(answers) {
            assert_eq!(
                ans,
                a.0.to_string(),
                "{framing}: indexer on message {}",
                a.1
            );
        }
        // tailsrv streams exactly the file.
        assert_eq!(read_exact(&mut follower, data.len()), data, "{framing}");
    }
}

/// The collator is killed with SIGKILL 25 times while tswrite (an idempotent `Writer`)
/// writes through it; each time a new collator starts on the same file and port. Every
/// message is acknowledged, is in the file exactly once, at its acknowledged position.
#[test]
fn kill_9_during_writes_loses_and_duplicates_nothing() {
    let dir = tempdir();
    let file = dir.path().join("log");
    let framing = "u32be";
    let mut c = collate(&file, &["--framing", framing]);
    let port = c.addr().port();
    const N: usize = 40_000;
    let ms: Vec<Vec<u8>> = (0..N).map(|i| payload(9, i, i % 60 + 1)).collect();
    let mut input = Vec::new();
    for m in &ms {
        input.extend_from_slice(m);
        input.push(b'\n');
    }
    // Fed slowly, so the kills land while messages are flowing.
    let chunk = input.len() / 400 + 1;
    let writer = tswrite([
        &format!("{LOOPBACK}:{port}"),
        "--id",
        "killer",
        "--batch-bytes",
        "2000",
    ])
    .paced(input, 0, chunk, Duration::from_millis(20))
    .spawn();
    let started = Instant::now();
    let mut kills = 0;
    let mut cuts = 0;
    let mut restart_ends = std::collections::BTreeSet::new();
    let mut last_end = 0;
    while kills < 25 && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(80));
        // Kill only once data has flowed since the last restart (on a loaded machine a
        // restart and the producer's reconnect can take longer than the pause above).
        eventually(Duration::from_secs(5), || {
            std::fs::metadata(&file).is_ok_and(|m| m.len() > last_end)
        });
        c.signal(Signal::KILL);
        c.wait_exit(PATIENCE).expect("killed collator exits");
        kills += 1;
        c = collator(&file)
            .port(port)
            .args(["--framing", framing])
            .start();
        if c.log.text().contains("cutting a torn tail") {
            cuts += 1;
        }
        last_end = std::fs::metadata(&file).unwrap().len();
        restart_ends.insert(last_end);
    }
    let (status, out, err) = writer.finish_within(Duration::from_secs(120));
    let out = String::from_utf8(out).unwrap();
    assert!(
        status.success(),
        "tswrite failed: {status:?}; stderr:\n{err}"
    );
    assert!(kills >= 20, "only {kills} kills");
    // The kills landed while data was flowing: the file grew between most restarts.
    assert!(
        restart_ends.len() >= 15,
        "the file grew between only {} of {kills} restarts",
        restart_ends.len()
    );
    let acked: Vec<(u64, u64, Vec<u8>)> = out
        .lines()
        .zip(&ms)
        .map(|(l, m)| {
            let (b, n) = l
                .split_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            (b.parse().unwrap(), n.parse().unwrap(), m.clone())
        })
        .collect();
    assert_eq!(acked.len(), N, "one line per message");
    let data = std::fs::read(&file).unwrap();
    check_file(framing, &data, &acked);
    eprintln!("{kills} kills, {cuts} restarts cut a torn tail");
}

/// Torn tails made by hand (a partial message, a run of zeros, a half-written batch) are
/// cut at the next start, and the log says what was cut.
#[test]
fn torn_tails_are_cut_on_restart() {
    for framing in FRAMINGS {
        let dir = tempdir();
        let file = dir.path().join("log");
        let mut c = collate(&file, &["--framing", framing]);
        let mut p = Producer::new(&c);
        let ms: Vec<Vec<u8>> = (0..5).map(|i| payload(0, i, 10)).collect();
        let (_, _, n) = ok(&p.request(&batch_request(framing, &ms)));
        assert_eq!(n, 5);
        drop(p);
        c.signal(Signal::TERM);
        assert!(c.wait_exit(PATIENCE).unwrap().success());
        let good = std::fs::read(&file).unwrap();
        let mut one = Vec::new();
        framed::encode(framing, b"extra message", &mut one);
        let tails: [(&str, Vec<u8>); 3] = [
            ("partial", one[..one.len() - 3].to_vec()),
            ("zeros", vec![0; 4096]),
            // Two complete messages of a batch of three: its journal record was written
            // first (as the collator does), the third message never was.
            ("half batch", [one.clone(), one.clone()].concat()),
        ];
        let mut journal = file.as_os_str().to_owned();
        journal.push(".collator");
        for (what, tail) in tails {
            if what == "half batch" {
                let start = good.len();
                let record = format!("b {start} {}\n", start + 3 * one.len());
                append(Path::new(&journal), record.as_bytes());
            }
            append(&file, &tail);
            let c = collate(&file, &["--framing", framing]);
            assert!(
                c.log.wait_for("cutting a torn tail", PATIENCE).is_some(),
                "{framing} {what}: nothing cut; log:\n{}",
                c.log.text()
            );
            assert_eq!(std::fs::read(&file).unwrap(), good, "{framing} {what}");
            let mut p = Producer::new(&c);
            assert_eq!(
                p.request(b"end\n"),
                format!("end {} 5 {framing}", good.len()),
                "{framing} {what}"
            );
        }
    }
}

/// Every kind of bad input: refused with its code, and the connection stays usable when the
/// body could be skipped; a bad header gets one error line and the connection is closed.
#[test]
fn bad_input() {
    let dir = tempdir();
    let file = dir.path().join("log");
    let c = collate(
        &file,
        &[
            "--max-message",
            "100",
            "--max-request",
            "1000",
            "--header-timeout",
            "1",
        ],
    );
    let mut p = Producer::new(&c);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (msg_request(b""), "error: bad-body:"),
        (msg_request(b"a\nb"), "error: bad-body:"),
        (msg_request(&[b'x'; 101]), "error: too-big:"),
        (
            batch_request("newline", &[b"a".to_vec(), b"b".to_vec()]).replace_count(3),
            "error: bad-body:",
        ),
        (b"batch 2 4\nab\nc".to_vec(), "error: bad-body:"),
        (b"batch 2 3\na\n\n".to_vec(), "error: bad-body:"),
        (
            [b"batch 1 1001\n".to_vec(), vec![b'x'; 1001]].concat(),
            "error: too-big:",
        ),
        (b"msg 1 id p seq 5\nx".to_vec(), "ok "),
        (
            b"msg 1 id p seq 7\nx".to_vec(),
            "error: sequence-gap: producer p sent seq 7, expected 6",
        ),
        (b"msg 1 id p seq 5\nx".to_vec(), "ok "),
        // A restarted producer: far ahead of the window, a new session.
        (b"msg 1 id p seq 1000\nw".to_vec(), "ok 2 1 1"),
        (b"msg 1\nz".to_vec(), "ok 4 2 1"),
    ];
    let mut answers = Vec::new();
    for (req, want) in &cases {
        let a = p.request(req);
        assert!(
            a.starts_with(want),
            "{:?}: {a:?}",
            String::from_utf8_lossy(req)
        );
        answers.push(a);
    }
    // The retry was answered with the original position, and nothing else was written.
    assert_eq!(answers[7], answers[9]);
    assert_eq!(std::fs::read(&file).unwrap(), b"x\nw\nz\n");
    // Header errors: one line, then the connection is closed.
    for (req, want) in [
        (&b"hello\n"[..], "error: bad-request:"),
        (&[b'm'; 5000][..], "error: too-long:"),
        (b"msg 1", "error: timeout:"),
        (b"msg 2 to x\nab", "error: wrong-mode:"),
    ] {
        let mut s = c.connect();
        s.write_all(req).unwrap();
        let all = read_text(&mut s);
        assert!(all.starts_with(want), "{all:?}");
        assert_eq!(all.lines().count(), 1, "{all:?}");
    }
    // Answers owed before a bad header still come first.
    let mut s = c.connect();
    s.write_all(b"msg 1\nqend\nnonsense\n").unwrap();
    let all = read_text(&mut s);
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines.len(), 3, "{all:?}");
    assert_eq!(lines[0], "ok 6 3 1");
    assert_eq!(lines[1], "end 8 4 newline");
    assert!(lines[2].starts_with("error: bad-request:"));
}

trait ReplaceCount {
    fn replace_count(self, n: u64) -> Vec<u8>;
}

impl ReplaceCount for Vec<u8> {
    /// Rewrites a `batch C L` header's count.
    fn replace_count(self, n: u64) -> Vec<u8> {
        let nl = self.iter().position(|&b| b == b'\n').unwrap();
        let head = String::from_utf8(self[..nl].to_vec()).unwrap();
        let len = head.rsplit(' ').next().unwrap();
        [format!("batch {n} {len}").into_bytes(), self[nl..].to_vec()].concat()
    }
}

/// A second collator on the same file exits at once, saying why; the first is unharmed.
#[test]
fn second_collator_on_the_same_file_is_refused() {
    let dir = tempdir();
    let file = dir.path().join("log");
    let c = collate(&file, &[]);
    let mut second = collator(&file).spawn();
    let status = second.wait_exit(PATIENCE).expect("second collator exits");
    assert!(!status.success());
    assert!(
        second
            .log
            .wait_for("another collator is writing", PATIENCE)
            .is_some(),
        "{}",
        second.log.text()
    );
    let mut p = Producer::new(&c);
    assert_eq!(p.request(&msg_request(b"still here")), "ok 0 0 1");
}

/// SIGTERM while requests are in flight: every request sent before it is answered `ok`
/// (none lost), the collator exits 0, and the file holds exactly what was acknowledged.
#[test]
fn sigterm_drains_in_flight_requests() {
    let dir = tempdir();
    let file = dir.path().join("log");
    let mut c = collate(&file, &["--sync", "data"]);
    let mut p = Producer::new(&c);
    let ms: Vec<Vec<u8>> = (0..2000).map(|i| payload(0, i, 20)).collect();
    let mut wire = Vec::new();
    for m in &ms {
        wire.extend_from_slice(&msg_request(m));
    }
    p.send(&wire);
    let first = p.line();
    c.signal(Signal::TERM);
    let mut acked = vec![first];
    while let Some(l) = p.next_line() {
        acked.push(l);
    }
    assert!(c.wait_exit(PATIENCE).expect("exits").success());
    let oks: Vec<(u64, u64, Vec<u8>)> = acked
        .iter()
        .take_while(|l| l.starts_with("ok "))
        .zip(&ms)
        .map(|(l, m)| {
            let (o, n, _) = ok(l);
            (o, n, m.clone())
        })
        .collect();
    // Requests read after the signal may be refused as `busy`, never lost.
    for l in &acked[oks.len()..] {
        assert!(l.starts_with("error: busy:"), "{l:?}");
    }
    check_file("newline", &std::fs::read(&file).unwrap(), &oks);
}

/// Directory mode: `to PATH` under tailsrv's rule; files created on first write.
#[test]
fn directory_mode() {
    let dir = tempdir();
    let root = dir.path().join("logs");
    std::fs::create_dir_all(root.join("app")).unwrap();
    std::fs::write(root.join(".ignore"), "secret*\n").unwrap();
    let journals = dir.path().join("journals");
    let c = collator(&root).arg("--journal-dir").arg(&journals).start();
    let mut p = Producer::new(&c);
    assert_eq!(p.request(b"end to app/a.log\n"), "end 0 0 newline");
    assert!(!root.join("app/a.log").exists(), "`end` creates nothing");
    assert_eq!(p.request(b"msg 2 to app/a.log\nhi"), "ok 0 0 1");
    assert_eq!(p.request(b"msg 3 to app/a.log\nyou"), "ok 3 1 1");
    assert_eq!(p.request(b"msg 1 to b.log\nx"), "ok 0 0 1");
    assert_eq!(std::fs::read(root.join("app/a.log")).unwrap(), b"hi\nyou\n");
    for bad in [
        &b"msg 1 to ../outside\nx"[..],
        b"msg 1 to /etc/passwd\nx",
        b"msg 1 to secret.log\nx",
        b"msg 1 to app/../b.log\nx",
    ] {
        let a = p.request(bad);
        assert!(a.starts_with("error: not-served:"), "{a:?}");
    }
    assert!(p
        .request(b"msg 1 to nodir/x.log\nx")
        .starts_with("error: not-found:"));
    assert!(p.request(b"msg 1\nx").starts_with("error: wrong-mode:"));
    assert!(!dir.path().join("outside").exists());
    assert!(!root.join("secret.log").exists());
}

/// A 256 KiB tmpfs mounted at `mnt` (created), unmounted when the guard drops; `None` (the
/// test skips, saying why) where mounting is not allowed (not root).
fn small_tmpfs(mnt: &Path) -> Option<Unmount> {
    std::fs::create_dir(mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs (not root?)");
        return None;
    }
    Some(Unmount(mnt.to_owned()))
}

/// Unmounts its directory when dropped.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A full disk: the request that does not fit is refused with `disk-full`, nothing of it
/// stays in the file, and the collator goes on serving. Needs root (a small tmpfs).
#[test]
fn disk_full_cuts_back_and_keeps_serving() {
    let dir = tempdir();
    let mnt = dir.path().join("small");
    let Some(_unmount) = small_tmpfs(&mnt) else {
        return;
    };
    let file = mnt.join("log");
    let mut c = collate(&file, &["--max-message", "100000"]);
    let mut p = Producer::new(&c);
    let mut acked = Vec::new();
    let mut full = None;
    for i in 0..100 {
        let m = payload(0, i, 30_000);
        let a = p.request(&msg_request(&m));
        if a.starts_with("ok ") {
            let (o, n, _) = ok(&a);
            acked.push((o, n, m));
        } else {
            full = Some(a);
            break;
        }
    }
    let full = full.expect("the disk never filled");
    assert!(full.starts_with("error: disk-full:"), "{full:?}");
    let data = std::fs::read(&file).unwrap();
    check_file("newline", &data, &acked);
    // Still serving: a small message fits in what is left... or is refused the same way.
    let a = p.request(&msg_request(b"small"));
    assert!(
        a.starts_with("ok ") || a.starts_with("error: disk-full:"),
        "{a:?}"
    );
    assert!(p.request(b"end\n").starts_with("end "));
    c.signal(Signal::TERM);
    c.wait_exit(PATIENCE);
}

/// The answers of many producers at once add up, in every sync mode: no two requests share
/// a position, and the file holds exactly what was acknowledged.
#[test]
fn many_connections_share_the_file() {
    for sync in ["none", "write", "data", "interval=20"] {
        many_connections(sync);
    }
}

fn many_connections(sync: &str) {
    let dir = tempdir();
    let file = dir.path().join("log");
    let mut c = collate(&file, &["--sync", sync]);
    let addr = c.addr();
    let threads: Vec<_> = (0..16)
        .map(|t| {
            std::thread::spawn(move || {
                let mut p = Producer::connect(addr);
                (0..50)
                    .map(|i| {
                        let m = payload(t, i, 10);
                        let (o, n, _) = ok(&p.request(&msg_request(&m)));
                        (o, n, m)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let acked: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let by_no: HashMap<u64, u64> = acked.iter().map(|a| (a.1, a.0)).collect();
    assert_eq!(by_no.len(), acked.len(), "{sync}");
    // `none` acknowledges at queueing: the write may still be under way; SIGTERM finishes it.
    c.signal(Signal::TERM);
    assert!(c.wait_exit(PATIENCE).expect("exits").success(), "{sync}");
    check_file("newline", &std::fs::read(&file).unwrap(), &acked);
}

/// `--sync data` with tailsrv `--serve-up-to-synced`: a follower never holds a byte past the
/// synced length, and receives every acknowledged message. Without a published length
/// nothing is sent; a published length is an exact cap.
#[test]
fn followers_never_see_past_the_synced_length() {
    // The cap by hand: bytes in the file, no sidecar, then a sidecar saying 5.
    let dir = tempdir();
    let file = dir.path().join("log");
    std::fs::write(&file, b"0123456789").unwrap();
    let ts = tailsrv(&file).arg("--serve-up-to-synced").start();
    let mut f = ts.request("0");
    f.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        f.read(&mut buf).is_err(),
        "sent bytes with no synced length published"
    );
    let mut sidecar = file.as_os_str().to_owned();
    sidecar.push(".synced");
    std::fs::write(&sidecar, 5u64.to_be_bytes()).unwrap();
    assert_eq!(read_exact(&mut f, 5), b"01234");
    f.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(f.read(&mut buf).is_err(), "sent past the synced length");
    drop((f, ts));

    // With a collator writing in data mode.
    let dir = tempdir();
    let file = dir.path().join("log");
    let c = collate(&file, &["--sync", "data"]);
    let ts = tailsrv(&file).arg("--serve-up-to-synced").start();
    let mut f = ts.request("0");
    let addr = c.addr();
    let producers: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let mut p = Producer::connect(addr);
                for i in 0..100 {
                    ok(&p.request(&msg_request(&payload(t, i, 50))));
                }
            })
        })
        .collect();
    let expected: u64 = (0..4)
        .flat_map(|t| (0..100).map(move |i| payload(t, i, 50).len() as u64 + 1))
        .sum();
    let mut received = 0u64;
    let mut reads = 0;
    f.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut big = vec![0u8; 1 << 16];
    while received < expected {
        let n = f.read(&mut big).unwrap();
        assert!(n > 0, "tailsrv closed the stream");
        received += n as u64;
        reads += 1;
        // Read after the bytes arrived, so it can only be larger than it was when they left.
        let limit = synced(&file);
        assert!(
            received <= limit,
            "received {received} bytes, synced only {limit}"
        );
    }
    for p in producers {
        p.join().unwrap();
    }
    assert!(reads > 1);
    let data = std::fs::read(&file).unwrap();
    assert_eq!(data.len() as u64, received);
    assert_eq!(framed::naive_starts("newline", &data).0.len(), 400);
}

/// A torn write (issue #25, item 2), made by hand after a `kill -9` in `--sync data`: the last
/// group's data only partly on disk (half a batch, a partial message, zeros in its middle or
/// instead of it), its journal record lost, or bytes after it that no group wrote (zeros
/// ending in a newline, a stray message). Each time the restart cuts the file to exactly the
/// groups acknowledged before the torn one, says what it cut, and the next write lands there.
/// Both ways of describing groups: the file's extended attribute, and the journal
/// (`--no-xattr`).
#[test]
fn torn_write_groups_are_cut_to_the_last_complete_one() {
    const CASES: [&str; 7] = [
        "half batch",
        "half batch, record lost",
        "partial message",
        "zeros in the middle",
        "zeros instead of the group",
        "zeros then a newline",
        "stray message",
    ];
    for marker in [&[][..], &["--no-xattr"][..]] {
        for framing in FRAMINGS {
            for what in CASES {
                torn_write(framing, marker, what);
            }
        }
    }
}

fn torn_write(framing: &str, marker: &[&str], what: &str) {
    let dir = tempdir();
    let file = dir.path().join("log");
    let mut journal = file.as_os_str().to_owned();
    journal.push(".collator");
    let journal = std::path::PathBuf::from(journal);
    let mut args = vec!["--framing", framing, "--sync", "data"];
    args.extend_from_slice(marker);
    let mut c = collate(&file, &args);
    let mut p = Producer::new(&c);
    ok(&p.request(&msg_request(&payload(0, 0, 20))));
    let ms: Vec<Vec<u8>> = (1..4).map(|i| payload(0, i, 20)).collect();
    assert_eq!(ok(&p.request(&batch_request(framing, &ms))).2, 3);
    let good = std::fs::read(&file).unwrap();
    // The last group, a batch of three, is the one to tear.
    let last: Vec<Vec<u8>> = (4..7).map(|i| payload(0, i, 20)).collect();
    assert_eq!(ok(&p.request(&batch_request(framing, &last))).1, 4);
    drop(p);
    c.signal(Signal::KILL);
    c.wait_exit(PATIENCE);
    let whole = std::fs::read(&file).unwrap();
    let journal_whole = std::fs::read(&journal).unwrap();
    let mut two = Vec::new();
    for m in &last[..2] {
        framed::encode(framing, m, &mut two);
    }
    // The journal without its last line (the torn group's record never reached the disk).
    let cut_at = journal_whole[..journal_whole.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let journal_lost = journal_whole[..cut_at].to_vec();
    let (content, journal_bytes) = match what {
        "half batch" => ([&good[..], &two].concat(), &journal_whole),
        "half batch, record lost" => ([&good[..], &two].concat(), &journal_lost),
        "partial message" => (whole[..whole.len() - 3].to_vec(), &journal_whole),
        "zeros in the middle" => {
            let mut holed = whole.clone();
            holed[good.len() + 5..good.len() + 15].fill(0);
            (holed, &journal_whole)
        }
        "zeros instead of the group" => (
            [&good[..], &vec![0; whole.len() - good.len()]].concat(),
            &journal_whole,
        ),
        "zeros then a newline" => ([&good[..], &[0; 300][..], b"\n"].concat(), &journal_lost),
        "stray message" => {
            let mut stray = Vec::new();
            framed::encode(framing, b"stray message", &mut stray);
            ([&good[..], &stray].concat(), &journal_lost)
        }
        _ => unreachable!(),
    };
    let what = format!("{framing} {what} {marker:?}");
    std::fs::write(&file, &content).unwrap();
    std::fs::write(&journal, journal_bytes).unwrap();
    let mut c = collate(&file, &args);
    let line = c.log.wait_for("cutting a torn tail", PATIENCE);
    assert!(
        line.is_some(),
        "{what}: nothing cut; log:\n{}",
        c.log.text()
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        good,
        "{what}: not cut to the last complete group; log:\n{}",
        c.log.text()
    );
    let mut p = Producer::new(&c);
    assert_eq!(
        p.request(b"end\n"),
        format!("end {} 4 {framing}", good.len()),
        "{what}"
    );
    let (o, n, _) = ok(&p.request(&msg_request(b"after")));
    assert_eq!((o, n), (good.len() as u64, 4), "{what}");
    drop(p);
    c.signal(Signal::KILL);
    c.wait_exit(PATIENCE);
}

/// Sequence numbers wrap (issue #25, item 7): `u64::MAX`, `0`, then `u64::MAX` again is a
/// retry answered with its first position; the next gap is named right; and a body length
/// of `u64::MAX` is answered `too-big` before the connection closes.
#[test]
fn sequences_wrap_and_huge_lengths_are_answered() {
    let dir = tempdir();
    let file = dir.path().join("log");
    let mut c = collate(&file, &[]);
    let mut p = Producer::new(&c);
    let req = |seq: u64, body: &[u8]| {
        let mut r = format!("msg {} id w seq {seq}\n", body.len()).into_bytes();
        r.extend_from_slice(body);
        r
    };
    for seq in 10..13 {
        ok(&p.request(&req(seq, b"early")));
    }
    let max = p.request(&req(u64::MAX, b"max"));
    let (o, n, _) = ok(&max);
    assert_eq!((o, n), (18, 3));
    ok(&p.request(&req(0, b"zero")));
    assert_eq!(
        p.request(&req(u64::MAX, b"max")),
        max,
        "a retry after the wrap"
    );
    let gap = p.request(&req(13, b"thirteen"));
    assert!(
        gap.starts_with("error: sequence-gap:") && gap.contains("expected 1"),
        "{gap:?}"
    );
    let data = std::fs::read(&file).unwrap();
    assert_eq!(data, b"early\nearly\nearly\nmax\nzero\n");
    drop(p);
    let mut s = c.connect();
    s.write_all(b"msg 18446744073709551615\nsome bytes")
        .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let answer = read_text(&mut s);
    assert!(answer.starts_with("error: too-big:"), "{answer:?}");
    c.signal(Signal::TERM);
    c.wait_exit(PATIENCE);
}

/// The collator's resident memory, from `/proc/PID/status`.
fn rss(p: &Proc) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.pid())).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb << 10
}

/// Bodies in flight count against `--max-pending` (issue #25, item 6): twenty producers each
/// send most of a 3 MiB body (60 MiB in all) to a collator with an 8 MiB budget, and its
/// RSS stays under baseline + budget + 16 MiB; a thousand idle connections cost under 16 MiB,
/// and once every connection is gone RSS comes back within 8 MiB of the baseline.
#[test]
fn memory_is_bounded_while_bodies_arrive() {
    raise_fd_limit();
    let dir = tempdir();
    let file = dir.path().join("log");
    const MIB: u64 = 1 << 20;
    let c = collate(
        &file,
        &[
            "--max-pending",
            "8388608",
            "--max-message",
            "3145728",
            "--max-request",
            "3145728",
            "--header-timeout",
            "30",
        ],
    );
    // Warm up: one small request.
    let mut p = Producer::new(&c);
    ok(&p.request(&msg_request(b"warm")));
    drop(p);
    std::thread::sleep(Duration::from_millis(200));
    let baseline = rss(&c);
    let mut socks = Vec::new();
    let mut senders = Vec::new();
    for _ in 0..20 {
        let s = c.connect();
        let mut w = s.try_clone().unwrap();
        socks.push(s);
        senders.push(std::thread::spawn(move || {
            w.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut req = b"msg 3145728\n".to_vec();
            req.extend(std::iter::repeat_n(b'a', 3 << 20).take((3 << 20) - 100_000));
            let _ = w.write_all(&req);
        }));
    }
    let mut peak = 0;
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        peak = peak.max(rss(&c));
        std::thread::sleep(Duration::from_millis(20));
    }
    for s in senders {
        s.join().unwrap();
    }
    eprintln!(
        "baseline {:.1} MiB, peak {:.1} MiB with 20 bodies of 3 MiB in flight",
        baseline as f64 / MIB as f64,
        peak as f64 / MIB as f64
    );
    assert!(
        peak < baseline + 8 * MIB + 16 * MIB,
        "RSS {} MiB over a baseline of {} MiB with an 8 MiB budget",
        peak / MIB,
        baseline / MIB
    );
    drop(socks);
    let idle: Vec<TcpStream> = (0..1000).map(|_| c.connect()).collect();
    std::thread::sleep(Duration::from_millis(500));
    let with_idle = rss(&c);
    assert!(
        with_idle < baseline + 16 * MIB,
        "RSS {} MiB with 1000 idle connections (baseline {} MiB)",
        with_idle / MIB,
        baseline / MIB
    );
    drop(idle);
    let mut after = 0;
    let back = eventually(Duration::from_secs(5), || {
        after = rss(&c);
        after < baseline + 8 * MIB
    });
    eprintln!(
        "1000 idle connections: {:.1} MiB; after all closed: {:.1} MiB",
        with_idle as f64 / MIB as f64,
        after as f64 / MIB as f64
    );
    assert!(
        back,
        "RSS {} MiB after every connection closed (baseline {} MiB)",
        after / MIB,
        baseline / MIB
    );
}

/// A body that stops mid-way is dropped with `error: timeout:` and the connection closed,
/// as a header that stalls is (issue #25, item 6).
#[test]
fn a_stalled_body_times_out() {
    let dir = tempdir();
    let file = dir.path().join("log");
    let c = collate(&file, &["--header-timeout", "1"]);
    let mut s = c.connect();
    s.write_all(b"msg 1000\n").unwrap();
    s.write_all(&[b'x'; 500]).unwrap();
    let started = Instant::now();
    let answer = read_text(&mut s);
    assert!(answer.starts_with("error: timeout:"), "{answer:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(std::fs::read(&file).unwrap(), b"");
}

/// A refused write is not in the file (issue #25, item 3): on a full disk the refusal names
/// the byte the file was cut back to, the file is exactly that long and holds exactly what
/// was acknowledged — also after a `kill -9` and a restart, which finds nothing to cut —
/// and a retry of the refused request (same id and seq) is written, once.
#[test]
fn refused_writes_are_not_in_the_file() {
    let dir = tempdir();
    let mnt = dir.path().join("small");
    let Some(_unmount) = small_tmpfs(&mnt) else {
        return;
    };
    // Removed before the restart, to make room for the retry.
    let ballast = mnt.join("ballast");
    std::fs::write(&ballast, vec![1u8; 96 << 10]).unwrap();
    let file = mnt.join("log");
    let args = ["--max-message", "100000", "--sync", "data"];
    let mut c = collate(&file, &args);
    let mut p = Producer::new(&c);
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..100 {
        let m = payload(0, i, 30_000);
        let mut req = format!("msg {} id r seq {}\n", m.len(), 100 + i).into_bytes();
        req.extend_from_slice(&m);
        let a = p.request(&req);
        if a.starts_with("ok ") {
            let (o, n, _) = ok(&a);
            acked.push((o, n, m));
        } else {
            refused = Some((a, req, m));
            break;
        }
    }
    let (answer, req, m) = refused.expect("the disk never filled");
    assert!(answer.starts_with("error: disk-full:"), "{answer:?}");
    let at: u64 = answer
        .split("cut back to byte ")
        .nth(1)
        .and_then(|r| r.split(|ch: char| !ch.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the refusal does not say where the file ends: {answer:?}"));
    let data = std::fs::read(&file).unwrap();
    assert_eq!(
        data.len() as u64,
        at,
        "the refusal's length is not the file's"
    );
    check_file("newline", &data, &acked);
    assert!(memchr::memmem::find(&data, &m).is_none());
    drop(p);
    c.signal(Signal::KILL);
    c.wait_exit(PATIENCE);
    std::fs::remove_file(&ballast).unwrap();
    let c = collate(&file, &args);
    assert!(c.log.wait_for("writing ", PATIENCE).is_some());
    assert!(
        !c.log.text().contains("cutting a torn tail"),
        "{}",
        c.log.text()
    );
    assert_eq!(std::fs::metadata(&file).unwrap().len(), at);
    let mut p = Producer::new(&c);
    let retry = p.request(&req);
    eprintln!("refused: {answer}; retry after the restart: {retry}");
    let ok = retry
        .strip_prefix("ok ")
        .unwrap_or_else(|| panic!("{retry:?}"));
    assert!(ok.starts_with(&format!("{at} ")), "{retry:?}");
    assert_eq!(p.request(&req), retry, "a second retry is a duplicate");
    let data = std::fs::read(&file).unwrap();
    assert_eq!(data.len() as u64, at + m.len() as u64 + 1);
    assert_eq!(memchr::memmem::find_iter(&data, &m).count(), 1);
}
