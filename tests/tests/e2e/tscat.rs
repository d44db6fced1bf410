//! tscat end to end, against real tailsrv (and tailsrv-indexer) processes on 127.0.0.1, killed
//! and restarted under it; tsmirror where tscat reads a replica (`tsmirror.rs` tests it alone).
//!
//! Ground truth is always the test's own copy of what it appended; message offsets are
//! computed by the test's own encoders (newline, nul, u32be, varint written here, not by
//! the code under test). tscat's stdout is captured raw, byte for byte.

use std::io::Read;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Instant;

use rustix::process::Signal;
use tests::lines::{Lines, Writer};
use tests::*;

/// What tscat may repeat after `kill -9` (its --help and the README state this bound):
/// 256 KiB of checkpoint interval plus one 64 KiB read plus what the (64 KiB) pipe held.
const KILL_REPEAT_BOUND: usize = (256 + 64 + 64) << 10;

/// Starts tailsrv-indexer on `path` with `framing`, its index in `dir`.
fn framed_indexer(path: &Path, framing: &str, dir: &Path) -> Proc {
    indexer(path)
        .args(["--framing", framing, "--index"])
        .arg(dir.join(format!("{framing}.idx")))
        .start()
}

/// Asks an indexer one question (test-side client, to wait for it to catch up).
fn ask_indexer(ix: &Proc, request: &str) -> String {
    LineClient::new(ix).ask(request)
}

/// Runs tscat until it exits by itself: status, stdout, stderr.
fn tscat_once(args: &[String]) -> (ExitStatus, Vec<u8>, String) {
    tscat(args).run()
}

#[test]
fn server_killed_and_restarted_mid_stream_output_is_exact() {
    let dir = tempdir();
    let path = dir.path().join("log");
    let mut all = random_bytes(300_000, 1);
    append(&path, &all);
    let srv = tailsrv(&path).start();
    let port = srv.addr().port();
    let cat = tscat(strings(&["--from-byte", "0", &srv.addr().to_string()])).spawn();
    cat.wait_len(all.len());

    let more = random_bytes(200_000, 2);
    append(&path, &more);
    all.extend_from_slice(&more);
    drop(srv); // SIGKILL, possibly mid-send
    let more = random_bytes(150_000, 3);
    append(&path, &more);
    all.extend_from_slice(&more);
    let srv = tailsrv(&path).port(port).start();
    cat.wait_len(all.len());

    // And again, with the server gone a little longer (a few backoff rounds).
    drop(srv);
    let more = random_bytes(50_000, 4);
    append(&path, &more);
    all.extend_from_slice(&more);
    // Let tscat fail a few rounds first (backoff), then bring the server back.
    cat.wait_stderr("cannot connect", 3);
    let _srv = tailsrv(&path).port(port).start();
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
    let srv = tailsrv(&path).start();
    let writer = Writer::start(path.clone(), lines);
    let cat_args = strings(&[
        "--state",
        state.to_str().unwrap(),
        "--framing",
        "newline",
        &srv.addr().to_string(),
    ]);

    // Run 1 dies by kill -9 mid-stream.
    let cat = tscat(&cat_args).spawn();
    cat.wait_len(600_000);
    cat.signal(Signal::KILL);
    let (_, out1, _) = cat.finish();

    // Run 2 resumes from the last checkpoint, then stops cleanly on SIGTERM mid-stream.
    let cat = tscat(&cat_args).spawn();
    cat.wait_len(600_000);
    cat.signal(Signal::TERM);
    let (status, out2, err2) = cat.finish();
    assert!(status.success(), "{status:?}: {err2}");

    // Run 3 must continue exactly where run 2 stopped, to the end.
    let cat = tscat(&cat_args).spawn();
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
    let primary = tailsrv(&primary_file).start();
    let mirror = tsmirror(strings(&[
        &primary.addr().to_string(),
        replica_file.to_str().unwrap(),
    ]))
    .spawn();
    let replica = tailsrv(&replica_file).start();
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len() as usize).unwrap_or(0);
    assert!(eventually(PATIENCE, || len(&replica_file) == all.len()));

    let servers = format!("{},{}", primary.addr(), replica.addr());
    let cat = tscat(strings(&["--servers", &servers])).spawn();
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
        let (data, starts) = messages(framing, 0, count);
        append(&path, &data);
        let ix = framed_indexer(&path, framing, dir.path());
        let srv = tailsrv(&path).start();
        assert!(
            eventually(PATIENCE, || ask_indexer(&ix, "count") == count.to_string()),
            "{framing}: indexer never counted {count}"
        );
        let common = |extra: &[&str]| {
            let mut a = strings(extra);
            a.extend(strings(&[
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
            let cat = tscat(common(&["--from-message", &n.to_string()])).spawn();
            cats.push((format!("--from-message {n}"), starts[n], cat));
        }
        // Relative starts resolved by the indexer to message boundaries.
        cats.push((
            "--from-end".into(),
            data.len(),
            tscat(common(&["--from-end"])).spawn(),
        ));
        let last = 1_000;
        let cut = data.len() - last;
        let holder = starts.iter().rposition(|&s| s <= cut).unwrap();
        cats.push((
            format!("--last {last}"),
            starts[holder],
            tscat(common(&["--last", &last.to_string()])).spawn(),
        ));
        // Everyone follows: two more messages, the first appended in two pieces.
        let (more, _) = messages(framing, count, 2);
        starts_then_growth(framing, &path, data, &more, 3, cats);
    }
}

/// Each tscat of `cats` (what it was asked, the offset it starts at, the process) prints the
/// file `data` from there; then `more` is appended in two pieces (`split` bytes, the rest),
/// and each prints that too and stops cleanly on SIGTERM.
fn starts_then_growth(
    framing: &str,
    path: &Path,
    mut data: Vec<u8>,
    more: &[u8],
    split: usize,
    cats: Vec<(String, usize, Proc)>,
) {
    for (what, from, cat) in &cats {
        cat.wait_len(data.len() - from);
        assert!(cat.output() == data[*from..], "{framing} {what}");
        // Where a relative start lands is fixed once tscat has asked and connected.
        cat.wait_stderr("connected", 1);
    }
    append(path, &more[..split]);
    append(path, &more[split..]);
    data.extend_from_slice(more);
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

#[test]
fn whole_messages_only_across_a_stop() {
    let dir = tempdir();
    let path = dir.path().join("log");
    let state = dir.path().join("state");
    // Varint framing, a stop while the file ends inside a length prefix.
    let (data, starts) = messages("varint", 0, 20);
    let big = 17; // the 70,000-byte message: a 3-byte prefix
    append(&path, &data[..starts[big] + 1]);
    let srv = tailsrv(&path).start();
    let cat_args = strings(&[
        "--framing",
        "varint",
        "--state",
        state.to_str().unwrap(),
        &srv.addr().to_string(),
    ]);
    let cat = tscat(&cat_args).spawn();
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
    let cat = tscat(&cat_args).spawn();
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
    let dead = loopback(free_port()).to_string();
    let (status, out, err) = tscat_once(&strings(&["--no-retry", &dead]));
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(out.is_empty());
    assert!(
        err.contains("no server reachable") && err.contains(&dead),
        "{err}"
    );

    let other = loopback(free_port()).to_string();
    let list = format!("{dead},{other}");
    let (status, _, err) = tscat_once(&strings(&["--give-up-after", "1", "--servers", &list]));
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
    let ix = framed_indexer(&path, "newline", dir.path());
    let srv = tailsrv(&path).start();
    assert!(eventually(PATIENCE, || ask_indexer(&ix, "count") == "3"));
    let (status, out, err) = tscat_once(&strings(&[
        "--from-message",
        "10",
        "--indexer",
        &ix.addr().to_string(),
        &srv.addr().to_string(),
    ]));
    assert_eq!(status.code(), Some(4), "{err}");
    assert!(out.is_empty());
    assert!(err.contains("refused \"offset-of 10\""), "{err}");

    let dead = loopback(free_port()).to_string();
    let (status, _, err) = tscat_once(&strings(&[
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
    let srv = tailsrv(&path).start();
    let state = dir.path().join("state");
    let garbage = b"tailsrv-consumer-state 1\noffset twelve\n";
    std::fs::write(&state, garbage).unwrap();
    let cat_args = strings(&["--state", state.to_str().unwrap(), &srv.addr().to_string()]);
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
    let first = tscat(&cat_args).spawn();
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
    let srv = loopback(9).to_string(); // never contacted
    let srv = srv.as_str();
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
        let (status, out, err) = tscat_once(&strings(&case));
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
    let srv = tailsrv(&path).start();
    let (status, out, err) = tscat_once(&strings(&[
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
    let srv = tailsrv(&path).args(["--max-clients", "1"]).start();
    // Take the only slot (it is ours once bytes flow).
    let mut holder = srv.request("0");
    read_exact(&mut holder, 10);

    let (status, out, err) = tscat_once(&strings(&["--no-retry", &srv.addr().to_string()]));
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(out.is_empty(), "the refusal reached stdout: {out:?}");
    assert!(err.contains("too many clients"), "{err}");

    let cat = tscat(strings(&[&srv.addr().to_string()])).spawn();
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
    let srv = tailsrv(&path).start();
    let port = srv.addr().port();
    let addr = srv.addr().to_string();
    let cat = tscat(strings(&[&addr])).spawn();
    let mirror = tsmirror(strings(&[&addr, replica.to_str().unwrap()])).spawn();
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
    let _srv = tailsrv(&path).port(port).start();
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
    let srv = tailsrv(&path).start();
    let port = srv.addr().port();
    // --last 4 and a state file: the server resolves the start and says where (`ok 0`), so
    // the position is absolute from the first byte on.
    let cat = tscat(strings(&[
        "--last",
        "4",
        "--state",
        state.to_str().unwrap(),
        &srv.addr().to_string(),
    ]))
    .spawn();
    cat.wait_len(4);
    append(&path, b"new\n");
    cat.wait_len(8);
    drop(srv); // SIGKILL
    append(&path, b"while down\n");
    let _srv = tailsrv(&path).port(port).start();
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
    let srv = tailsrv(&path).start();
    let mut cat = tscat(strings(&[
        "--state",
        state.to_str().unwrap(),
        &srv.addr().to_string(),
    ]))
    .raw_stdout()
    .spawn();
    let mut stdout = cat.take_stdout();
    let mut got = vec![0u8; 100_000];
    stdout.read_exact(&mut got).unwrap();
    assert!(got == data[..100_000]);
    drop(stdout); // the reader goes away while tscat is blocked writing
    let (status, _, err) = cat.finish();
    assert!(status.success(), "{status:?}: {err}");
    assert!(err.is_empty(), "{err}");
    // What sat in the pipe when the reader closed it was never read: the position is
    // exactly what the reader took.
    assert_eq!(saved_offset(&state), 100_000);
}

#[test]
fn the_stream_socket_has_a_short_keepalive() {
    // A server that vanishes without a FIN is only noticed by keepalive probes. Loopback
    // cannot lose packets, so check the kernel's view of tscat's socket: /proc/net/tcp shows
    // timer 2 (keepalive) armed to fire within tscat's 10 s, not the system's 2 hours.
    let dir = tempdir();
    let path = dir.path().join("log");
    append(&path, b"x\n");
    let srv = tailsrv(&path).start();
    let cat = tscat(strings(&[&srv.addr().to_string()])).spawn();
    cat.wait_len(2);
    let server_port = format!("{:04X}", srv.addr().port());
    let client_timer = || -> Option<(u32, u64)> {
        let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
        table.lines().skip(1).find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (local, remote, state, timer) = (f[1], f[2], f[3], f[5]);
            let (kind, when) = timer.split_once(':')?;
            // Established (01): not a closed connection of an earlier server on this port
            // number, in TIME_WAIT (another test's, in this process).
            (state == "01"
                && remote.ends_with(&format!(":{server_port}"))
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
    indexer(root)
        .args(["--framing", framing, "--index-dir"])
        .arg(index_dir)
        .start()
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
    let srv = tailsrv(&root).start();
    let port = srv.addr().port();
    let cat = tscat(strings(&[
        "--path",
        "sub dir/b.log",
        &srv.addr().to_string(),
    ]))
    .spawn();
    cat.wait_len(all.len());

    let more = random_bytes(100_000, 33);
    append(&path, &more);
    all.extend_from_slice(&more);
    append(&root.join("other.log"), b"noise\n");
    drop(srv); // SIGKILL, possibly mid-send
    let more = random_bytes(70_000, 34);
    append(&path, &more);
    all.extend_from_slice(&more);
    let _srv = tailsrv(&root).port(port).start();
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
        let (data, starts) = messages(framing, 0, count);
        append(&path, &data);
        let ix = dir_indexer(&root, framing, &dir.path().join("indexes"));
        let srv = tailsrv(&root).start();
        assert_eq!(
            ask_indexer(&ix, &format!("count {rel}")),
            count.to_string(),
            "{framing}"
        );
        let common = |extra: &[&str]| {
            let mut a = strings(extra);
            a.extend(strings(&[
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
            let cat = tscat(common(&["--from-message", &n.to_string()])).spawn();
            cats.push((format!("--from-message {n}"), starts[n], cat));
        }
        cats.push((
            "--from-end".into(),
            data.len(),
            tscat(common(&["--from-end"])).spawn(),
        ));
        // They follow the file: one more message, appended in two pieces.
        let (more, _) = messages(framing, count, 1);
        starts_then_growth(framing, &path, data, &more, 2, cats);
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
    let dir_srv = tailsrv(&root).start();
    let file_srv = tailsrv(root.join("ok.log")).start();
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
        let (status, out, err) = tscat_once(&strings(&case));
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
    let refusing = tailsrv(&other_root).start();
    let list = format!("{},{dir_addr}", refusing.addr());
    let cat = tscat(strings(&["--path", "ok.log", "--servers", &list])).spawn();
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
    let (status, _, err) = Spawn::tool("sh").args(["-c", &script]).run();
    assert!(status.success(), "{script}: {status:?}: {err}");
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
    let srv = tailsrv(&path).start();
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
        let got = tscat_into_head(
            &strings(&["--state", st, &addr]),
            n,
            &dir.path().join("out"),
        );
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
        let (status, rest, err) = tscat_once(&strings(&["--state", st, "--exit-at-end", &addr]));
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
    let srv = tailsrv(&path).start();
    let addr = srv.addr().to_string();
    for n in [3, 5_000, 70_000, 200_000, 700_000] {
        let state = dir.path().join(format!("state-{n}"));
        let st = state.to_str().unwrap();
        let cat_args = strings(&["--state", st, "--framing", "u32be", &addr]);
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
    let srv = tailsrv(&path).start();
    let addr = srv.addr().to_string();

    // Raw bytes: everything, exit 0.
    let (status, out, err) = tscat_once(&strings(&["--exit-at-end", &addr]));
    assert!(status.success(), "{status:?}: {err}");
    assert_eq!(out, b"a\nbb\nccc");

    // Whole messages only: the incomplete "ccc" is left for the next run.
    let framed = strings(&[
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
    let srv2 = tailsrv(&empty).start();
    let (status, out, err) = tscat_once(&strings(&["--exit-at-end", &srv2.addr().to_string()]));
    assert!(status.success(), "{status:?}: {err}");
    assert!(out.is_empty());
    let (status, out, err) = tscat_once(&strings(&["--exit-at-end", "--from-byte", "100", &addr]));
    assert!(status.success(), "{status:?}: {err}");
    assert!(out.is_empty());

    // A file that keeps growing still ends the run: at its length when tscat started.
    let mut lines = Lines::new();
    let grow = dir.path().join("grow");
    append(&grow, &lines.more(5_000));
    let srv3 = tailsrv(&grow).start();
    let before = std::fs::metadata(&grow).unwrap().len() as usize;
    let writer = Writer::start(grow.clone(), lines);
    let (status, out, err) = tscat_once(&strings(&[
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
    let srv = tailsrv(&path).start();
    let addr = srv.addr().to_string();

    // --count N: exactly N messages, then the next N from where the first run stopped.
    let count = strings(&["--count", "17", "--framing", "varint", "--state", st, &addr]);
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
    let (status, out, err) = tscat_once(&strings(&[
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
    let (status, out, err) = tscat_once(&strings(&["--bytes", "12345", "--from-byte", "7", &addr]));
    assert!(status.success(), "{status:?}: {err}");
    assert!(out == data[7..7 + 12345]);

    // A limit beyond the file waits for it: --count 2 on a file that has one message.
    let small = dir.path().join("small");
    append(&small, b"one\n");
    let srv2 = tailsrv(&small).start();
    let cat = tscat(strings(&[
        "--count",
        "2",
        "--framing",
        "newline",
        &srv2.addr().to_string(),
    ]))
    .spawn();
    cat.wait_len(4);
    append(&small, b"two\nthree\n");
    let (status, out, err) = cat.finish();
    assert!(status.success(), "{status:?}: {err}");
    assert_eq!(out, b"one\ntwo\n");

    // --count needs --framing: a usage error.
    let (status, out, err) = tscat_once(&strings(&["--count", "2", &addr]));
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(out.is_empty());
    assert!(err.contains("--framing"), "{err}");
}

#[test]
fn bad_addresses_are_usage_errors_at_once() {
    let started = Instant::now();
    let (not_a_port, one) = (format!("{LOOPBACK}:notaport"), loopback(1).to_string());
    let one_and_no_host = format!("{one},:4321");
    for (case, needle) in [
        (vec!["localhost"], "port is missing"),
        (vec![&not_a_port], "not a port number"),
        (vec!["no-such-host.invalid:4321"], "cannot be resolved"),
        (vec!["--servers", &one_and_no_host], "host is missing"),
        (
            vec!["--from-message", "1", "--indexer", "nowhere", &one],
            "indexer \"nowhere\"",
        ),
    ] {
        let (status, out, err) = tscat_once(&strings(&case));
        assert_eq!(status.code(), Some(2), "{case:?}: {err}");
        assert!(out.is_empty());
        assert!(err.contains(needle), "{case:?}: {err}");
    }
    let dir = tempdir();
    let replica = dir.path().join("replica");
    for server in ["localhost", "no-such-host.invalid:1"] {
        let (status, _, err) = tsmirror(strings(&[server, replica.to_str().unwrap()]))
            .spawn()
            .finish();
        assert_eq!(status.code(), Some(2), "{server}: {err}");
    }
    assert!(!replica.exists(), "a refused tsmirror created its file");
    assert!(started.elapsed() < PATIENCE, "not at once");
}
