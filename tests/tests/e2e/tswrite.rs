//! tswrite (and `client::writer::Writer` under it) against the real collator when something
//! dies: the collator losing its unsynced tail (a power loss, simulated by kill -9 and cutting
//! the file back to the length it last published as synced), and tswrite itself killed with
//! -9 and restarted with `--state`. The oracle is the input: the file must hold every message
//! of it once, in order, except exactly the messages tswrite reports as lost.

use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use rustix::process::Signal;
use tests::*;

/// A collator writing `file` at `port` (0: a free one) in `--sync sync`.
fn collator_at(file: &Path, port: &str, sync: &str) -> Proc {
    collator(file)
        .port(port.parse().unwrap())
        .args(["--sync", sync])
        .start()
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
    let mut c = collator_at(&file, "0", sync);
    let port = c.addr().port().to_string();
    const N: usize = 30_000;
    let input = lines(N, "m");
    let bytes = joined(&input);
    let server = format!("{LOOPBACK}:{port}");
    let writer = tswrite([
        &server,
        "--id",
        "pl",
        "--batch-bytes",
        "1500",
        "--keep-acked",
        keep_acked,
    ])
    .paced(
        bytes.clone(),
        0,
        bytes.len() / 300 + 1,
        Duration::from_millis(15),
    )
    .spawn();
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
        c = collator_at(&file, &port, sync);
    }
    let (status, out, err) = writer.finish_within(Duration::from_secs(60));
    let out = String::from_utf8(out).unwrap();
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
    let c = collator_at(&file, "0", "data");
    let server = c.addr().to_string();
    // As fast as the pipe takes it, and killed after a random number of answers (not after a
    // random time: a run through all of it takes from one second to several, with the
    // machine's load), so requests are always in flight when the kill lands.
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
    let seed = seed("TSWRITE_SEED");
    eprintln!("seed {seed} (TSWRITE_SEED={seed} replays it)");
    let mut rng = Rng::new(seed);
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
        let mut writer = tswrite(args)
            .paced(
                bytes.clone(),
                state_field(&state, "bytes") as usize,
                bytes.len() / 200 + 1,
                Duration::ZERO,
            )
            .spawn();
        if !last {
            // Up to 1/13 of the input per run: the last run still has work to do. 0 kills it
            // while it reads and checks its state.
            let answers = rng.below(N as u64 / 13) as usize;
            writer.out.wait(PATIENCE, |o, closed| {
                closed || memchr::memchr_iter(b'\n', o).count() >= answers
            });
            if writer.wait_exit(Duration::ZERO).is_none() {
                killed_mid_run += 1;
                writer.kill(); // SIGKILL, this child only
            }
        }
        let (status, out, err) = writer.finish_within(Duration::from_secs(60));
        let out = String::from_utf8(out).unwrap();
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

/// What a run of tswrite gave: its status, stdout, stderr.
type Run = (ExitStatus, Vec<u8>, String);

/// A corrupt state file, one saved for another producer, or an input that is not the one it
/// was saved for: exit 5 with an error naming the file, nothing sent.
#[test]
fn state_file_and_input_are_checked() {
    let dir = tempdir();
    let file = dir.path().join("log");
    let state = dir.path().join("state");
    let c = collator_at(&file, "0", "data");
    let server = c.addr().to_string();
    let st = state.to_str().unwrap();
    // A refused run exits without reading all its input.
    let run = |id: &str, input: &[u8]| {
        tswrite([&server, "--id", id, "--state", st])
            .input(input)
            .run()
    };
    let first = joined(&lines(100, "a"));
    let (status, _, _) = run("p", &first);
    assert!(status.success());
    let len = std::fs::metadata(&file).unwrap().len();
    let code = |o: &Run| o.0.code();
    let stderr = |o: &Run| o.2.clone();
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
    assert!(o.0.success() && o.1.is_empty(), "{}", stderr(&o));
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
