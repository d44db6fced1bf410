//! tswrite (and `client::writer::Writer` under it) against the real collator when something
//! dies: the collator losing its unsynced tail (a power loss, simulated by kill -9 and cutting
//! the file back to the length it last published as synced), and tswrite itself killed with
//! -9 and restarted with `--state`. The oracle is the input: the file must hold every message
//! of it once, in order, except exactly the messages tswrite reports as lost.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use tests::*;

const BIN: &str = "tailsrv-collator";

fn collator(file: &Path, port: &str, sync: &str) -> Proc {
    Proc::start(
        BIN,
        &[
            "-p",
            port,
            "--bind",
            "127.0.0.1",
            "--sync",
            sync,
            file.to_str().unwrap(),
        ],
    )
}

fn lines(n: usize, tag: &str) -> Vec<String> {
    (0..n)
        .map(|i| format!("{tag}-{i}-{}", "x".repeat(i % 37)))
        .collect()
}

fn joined(ls: &[String]) -> Vec<u8> {
    let mut v = Vec::new();
    for l in ls {
        v.extend_from_slice(l.as_bytes());
        v.push(b'\n');
    }
    v
}

/// Starts tswrite with `args`, feeding it `input`: the first `fast` bytes at once, the rest
/// in chunks with a pause between them, so it is mid-stream whenever something is killed.
/// Returns the child and the feeder.
fn spawn_fed(
    args: &[&str],
    input: Vec<u8>,
    fast: usize,
    chunk: usize,
    pause: Duration,
) -> (Child, std::thread::JoinHandle<()>) {
    let mut child = Command::new(bin("tswrite"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut sin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let fast = fast.min(input.len());
        if sin.write_all(&input[..fast]).is_err() {
            return;
        }
        for c in input[fast..].chunks(chunk) {
            if sin.write_all(c).is_err() {
                return;
            }
            std::thread::sleep(pause);
        }
    });
    (child, feeder)
}

fn read_all(r: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    let mut r = r.unwrap();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// The `rewritten: input messages A..B now start at byte OFFSET, message MSGNO` lines.
fn rewritten(log: &str) -> Vec<(usize, usize, u64, u64)> {
    let mut out = Vec::new();
    for line in log.lines() {
        if let Some(i) = line.find("rewritten: input messages ") {
            let words: Vec<&str> = line[i..]
                .split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .filter(|w| !w.is_empty() && w.as_bytes()[0].is_ascii_digit())
                .collect();
            let (a, b) = words[0].split_once("..").expect("a range");
            out.push((
                a.parse().unwrap(),
                b.parse().unwrap(),
                words[1].parse().unwrap(),
                words[2].parse().unwrap(),
            ));
        }
    }
    out
}

/// The `lost: input messages A..B` ranges in tswrite's log.
fn lost_ranges(log: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for line in log.lines() {
        if let Some(i) = line.find("lost: input messages ") {
            let rest = &line[i + "lost: input messages ".len()..];
            let range: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let (a, b) = range.split_once("..").expect("a range");
            out.push((a.parse().unwrap(), b.parse().unwrap()));
        }
    }
    out
}

/// Issue #25, item 4. A live tswrite with an id writes through a collator in
/// `--sync interval=MS`; five times the collator is killed with -9 and its file cut back to
/// the last length it published as synced (what a power loss leaves: the journal records
/// past that end are dropped by the restart check), and a new collator starts on the same
/// file and port. The producer must recover every time and carry on: the file holds every
/// input message once, in order, except exactly the ones tswrite reports lost (acknowledged,
/// then taken by the power loss, beyond what the writer keeps to write again: the README
/// says so); every message written again is logged with its new position, and every other
/// message's printed position is its position in the file.
#[test]
fn producer_recovers_after_collator_power_loss() {
    power_losses("16777216");
}

/// The same with `--keep-acked 0`: the writer keeps nothing acknowledged, so what the power
/// losses took back is reported lost (exit 1), and exactly that is missing from the file.
#[test]
fn producer_recovers_and_reports_what_it_cannot_rewrite() {
    power_losses("0");
}

fn power_losses(keep_acked: &str) {
    let dir = tempdir();
    let file = dir.path().join("log");
    let sync = "interval=150";
    let mut c = collator(&file, "0", sync);
    let port = c.addr().port().to_string();
    const N: usize = 30_000;
    let input = lines(N, "m");
    let bytes = joined(&input);
    let server = format!("127.0.0.1:{port}");
    let (mut child, feeder) = spawn_fed(
        &[
            &server,
            "--id",
            "pl",
            "--batch-bytes",
            "1500",
            "--keep-acked",
            keep_acked,
        ],
        bytes.clone(),
        0,
        bytes.len() / 300 + 1,
        Duration::from_millis(15),
    );
    let out = read_all(child.stdout.take());
    let err = read_all(child.stderr.take());
    let mut cut_rounds = 0;
    let mut cut_bytes = 0;
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(600));
        c.signal(Signal::KILL);
        c.wait_exit(PATIENCE).expect("killed collator exits");
        let len = std::fs::metadata(&file).unwrap().len();
        let keep = synced(&file);
        assert!(keep <= len, "synced {keep} past the end {len}");
        if keep < len {
            cut_rounds += 1;
            cut_bytes += len - keep;
            std::fs::OpenOptions::new()
                .write(true)
                .open(&file)
                .unwrap()
                .set_len(keep)
                .unwrap();
        }
        c = collator(&file, &port, sync);
    }
    feeder.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "tswrite did not finish");
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = out.join().unwrap();
    let err = err.join().unwrap();
    let lost = lost_ranges(&err);
    let mut is_lost = vec![false; N];
    for &(a, b) in &lost {
        for l in &mut is_lost[a..b] {
            assert!(!*l, "message reported lost twice");
            *l = true;
        }
    }
    let lost_count = is_lost.iter().filter(|&&l| l).count();
    let moved = rewritten(&err);
    let mut moved_to = vec![None; N];
    for &(a, b, offset, msgno) in &moved {
        moved_to[a] = Some((offset, msgno));
        for m in &mut moved_to[a + 1..b] {
            *m = Some((u64::MAX, u64::MAX)); // inside a rewritten batch: checked by content
        }
    }
    let moved_count: usize = moved.iter().map(|&(a, b, _, _)| b - a).sum();
    eprintln!(
        "{cut_rounds} of 5 power losses cut {cut_bytes} bytes; {moved_count} messages written \
         again in {} batches; {lost_count} reported lost in {} ranges; tswrite {status:?}",
        moved.len(),
        lost.len()
    );
    // Only the reported losses may make it fail.
    assert_eq!(
        status.code(),
        Some(if lost.is_empty() { 0 } else { 1 }),
        "tswrite stderr:\n{err}"
    );
    let printed: Vec<&str> = out.lines().collect();
    assert_eq!(printed.len(), N, "one line per message");
    let bad: Vec<&&str> = printed.iter().filter(|l| l.starts_with("error")).collect();
    assert!(
        bad.is_empty(),
        "messages handed back: {:?}",
        &bad[..bad.len().min(5)]
    );
    // The oracle: the input minus exactly what was reported lost, once each, in order.
    let want: Vec<&String> = input
        .iter()
        .zip(&is_lost)
        .filter(|(_, &l)| !l)
        .map(|(m, _)| m)
        .collect();
    let data = std::fs::read(&file).unwrap();
    let text = String::from_utf8(data).unwrap();
    let got: Vec<&str> = text.lines().collect();
    assert_eq!(got.len(), want.len(), "messages in the file");
    let mut offset = 0u64;
    let mut msgno = 0u64;
    for (i, m) in input.iter().enumerate() {
        if is_lost[i] {
            continue;
        }
        assert_eq!(
            got[msgno as usize],
            m.as_str(),
            "message {msgno} of the file"
        );
        match moved_to[i] {
            // Its earlier line is void; where it went is in the log.
            Some((o, n)) if o != u64::MAX => {
                assert_eq!((o, n), (offset, msgno), "input message {i} written again")
            }
            Some(_) => {}
            None => assert_eq!(
                printed[i],
                format!("{offset} {msgno}"),
                "input message {i}'s printed position"
            ),
        }
        offset += m.len() as u64 + 1;
        msgno += 1;
    }
    assert!(
        cut_rounds >= 3,
        "only {cut_rounds} power losses cut anything"
    );
}

/// A field of the state file (0 when there is none yet).
fn state_field(state: &Path, name: &str) -> u64 {
    let text = std::fs::read_to_string(state).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0, |n| n.parse().unwrap())
}

/// Issue #25, item 5. tswrite `--id P --state FILE` is killed with -9 at random moments
/// (12 rounds) while it writes through a collator in `--sync data`, and restarted each time
/// with the same state file and the same input; a last run finishes. The file holds the input
/// exactly once, in order, and every position any run printed is the message's position in
/// the file.
#[test]
fn restarted_tswrite_writes_exactly_once() {
    let dir = tempdir();
    let file = dir.path().join("log");
    let state = dir.path().join("state");
    let c = collator(&file, "0", "data");
    let server = c.addr().to_string();
    // As fast as the pipe takes it: requests are always in flight when the kill lands (a
    // run through all of it takes several seconds).
    const N: usize = 200_000;
    let input = lines(N, "r");
    let bytes = joined(&input);
    // Ground truth: where message i starts once written exactly once, in order.
    let mut starts = Vec::with_capacity(N);
    let mut at = 0u64;
    for m in &input {
        starts.push(at);
        at += m.len() as u64 + 1;
    }
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("seed {seed}");
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let args = [
        server.as_str(),
        "--id",
        "restarter",
        "--state",
        state.to_str().unwrap(),
        "--batch-bytes",
        "800",
    ];
    let mut killed_mid_run = 0;
    // Messages printed by an earlier run and again by its successor (its checkpoint lagged).
    let mut reprinted = 0;
    let mut printed_end = 0usize;
    let mut progress = std::collections::BTreeSet::new();
    for round in 0..13 {
        let last = round == 12;
        let base = state_field(&state, "messages") as usize;
        // The part already acknowledged comes at once (the restart reads and checks it).
        let (mut child, feeder) = spawn_fed(
            &args,
            bytes.clone(),
            state_field(&state, "bytes") as usize,
            bytes.len() / 200 + 1,
            Duration::ZERO,
        );
        let out = read_all(child.stdout.take());
        let err = read_all(child.stderr.take());
        let status = if last {
            child.wait().unwrap()
        } else {
            std::thread::sleep(Duration::from_millis(60 + rand(340)));
            let done = child.try_wait().unwrap();
            if done.is_none() {
                killed_mid_run += 1;
                let _ = child.kill(); // SIGKILL, this child only
            }
            child.wait().unwrap()
        };
        feeder.join().unwrap();
        let out = out.join().unwrap();
        let err = err.join().unwrap();
        progress.insert(state_field(&state, "messages"));
        if last {
            assert!(status.success(), "last run: {status:?}\n{err}");
        }
        // Every line printed is the message's true position (a retry in doubt included).
        for (j, l) in out.lines().enumerate() {
            let i = base + j;
            assert!(i < N, "round {round}: more lines than messages");
            assert_eq!(
                l,
                format!("{} {i}", starts[i]),
                "round {round}: line {j} (input message {i}); stderr:\n{err}"
            );
        }
        let n = out.lines().count();
        eprintln!("round {round}: from message {base}, {n} lines, {status:?}");
        reprinted += printed_end.saturating_sub(base).min(n);
        printed_end = printed_end.max(base + n);
        if last {
            assert_eq!(
                base + out.lines().count(),
                N,
                "the last run reaches the end"
            );
        }
    }
    eprintln!(
        "{killed_mid_run} of 12 runs killed mid-stream; {} distinct checkpoints; {reprinted} \
         messages printed by two runs",
        progress.len()
    );
    assert!(
        killed_mid_run >= 10,
        "only {killed_mid_run} kills landed mid-run"
    );
    assert!(
        progress.len() >= 6,
        "the runs made progress only {} times",
        progress.len()
    );
    let data = std::fs::read(&file).unwrap();
    assert_eq!(data.len(), bytes.len(), "file length: input written once");
    assert!(
        data == bytes,
        "the file is the input, exactly once, in order"
    );
}

/// A corrupt state file, one saved for another producer, or an input that is not the one it
/// was saved for: exit 5 with an error naming the file, nothing sent.
#[test]
fn state_file_and_input_are_checked() {
    let dir = tempdir();
    let file = dir.path().join("log");
    let state = dir.path().join("state");
    let c = collator(&file, "0", "data");
    let server = c.addr().to_string();
    let st = state.to_str().unwrap();
    let run = |id: &str, input: &[u8]| {
        let mut child = Command::new(bin("tswrite"))
            .args([&server, "--id", id, "--state", st])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A refused run exits without reading it all.
        let _ = child.stdin.take().unwrap().write_all(input);
        child.wait_with_output().unwrap()
    };
    let first = joined(&lines(100, "a"));
    let out = run("p", &first);
    assert!(out.status.success());
    let len = std::fs::metadata(&file).unwrap().len();
    let code = |o: &std::process::Output| o.status.code();
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    // Shorter input, different input, another producer's state.
    let o = run("p", &first[..first.len() / 2]);
    assert_eq!(code(&o), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("not the input"), "{}", stderr(&o));
    let mut other = first.clone();
    other[3] ^= 1;
    let o = run("p", &other);
    assert_eq!(code(&o), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("differ"), "{}", stderr(&o));
    let o = run("q", &first);
    assert_eq!(code(&o), Some(5), "{}", stderr(&o));
    // The same input again: nothing to write.
    let o = run("p", &first);
    assert!(o.status.success() && o.stdout.is_empty(), "{}", stderr(&o));
    // Damaged state files.
    let good = std::fs::read(&state).unwrap();
    for bad in [
        good[..good.len() - 3].to_vec(),
        {
            let mut b = good.clone();
            let i = b.iter().position(|&c| c == b'7' || c == b'3').unwrap();
            b[i] = if b[i] == b'7' { b'3' } else { b'7' };
            b
        },
        b"garbage\n".to_vec(),
    ] {
        std::fs::write(&state, &bad).unwrap();
        let o = run("p", &first);
        assert_eq!(code(&o), Some(5), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("is corrupt") && stderr(&o).contains(st),
            "{}",
            stderr(&o)
        );
    }
    assert_eq!(std::fs::metadata(&file).unwrap().len(), len, "nothing sent");
}
