//! One set of framing rules for every writer, end to end with the real binaries:
//!
//! - the torn-tail cut: a tsbridge `from-jetstream` output left with a zero-filled tail (what
//!   a power loss on XFS leaves) is cut exactly as the collator cuts the same file (the same
//!   log line, the same length), and the bridge then fetches the rest from the stream;
//! - the bounded decoder: tswrite refuses a length prefix over `--max-message` (and a line
//!   over it) with a clear error instead of allocating it, after writing what came before.
//!
//! The bridge test needs nats-server (skipped with a note without it, except under CI=true).

use std::path::Path;
use std::time::Duration;

use tests::framed::{self, FRAMINGS};
use tests::nats::{self, Cluster};
use tests::*;

/// The `cutting a torn tail: ...` sentence of a log (text or JSON), if there is one.
fn cut_line(log: &str) -> Option<String> {
    let at = log.find("cutting a torn tail")?;
    Some(
        log[at..]
            .chars()
            .take_while(|&c| c != '"' && c != '\n')
            .collect(),
    )
}

/// A collator on `file` in `framing`, on a free loopback port.
fn collator(file: &Path, framing: &str) -> Proc {
    tests::collator(file).args(["--framing", framing]).start()
}

/// Waits for a spawned binary to exit; its log on failure.
fn exit_code(p: &mut Proc, what: &str) -> i32 {
    match p.wait_exit(Duration::from_secs(90)) {
        Some(s) => s.code().unwrap_or(-1),
        None => panic!("{what} did not finish; log:\n{}", p.log.text()),
    }
}

#[test]
fn a_zero_filled_bridge_output_is_cut_like_the_collators() {
    if !nats::available() {
        return;
    }
    let cluster = Cluster::start(1, "");
    let urls = cluster.urls();
    let dir = tempdir();
    for framing in FRAMINGS {
        // 60 non-empty messages: the log, copied to a stream.
        let mut data = Vec::new();
        for i in 0..60 {
            framed::encode(framing, format!("message {i}").as_bytes(), &mut data);
        }
        let log = dir.path().join(format!("{framing}.log"));
        std::fs::write(&log, &data).unwrap();
        let server = Proc::start(
            "tailsrv",
            &["-p", "0", "--bind", "127.0.0.1", log.to_str().unwrap()],
        );
        let stream = format!("ZT_{}", framing.to_uppercase());
        let addr = server.addr().to_string();
        let mut to = Proc::spawn(
            "tsbridge",
            &[
                "to-jetstream",
                "--nats",
                &urls,
                "--stream",
                &stream,
                "--subject",
                &format!("zt.{framing}"),
                "--framing",
                framing,
                "--create-stream",
                "--replicas",
                "1",
                "--exit-at-end",
                &addr,
            ],
        );
        assert_eq!(exit_code(&mut to, "to-jetstream"), 0, "{}", to.log.text());

        // The output as a power loss leaves it: 40 messages on disk, then zeros.
        let (starts, _) = framed::naive_starts(framing, &data);
        let kept = starts[40] as usize;
        let mut torn = data[..kept].to_vec();
        torn.resize(kept + 8192, 0);
        let out = dir.path().join(format!("{framing}.out"));
        let copy = dir.path().join(format!("{framing}.collator"));
        std::fs::write(&out, &torn).unwrap();
        std::fs::write(&copy, &torn).unwrap();

        // The collator on the same bytes.
        let c = collator(&copy, framing);
        let by_collator = cut_line(&c.log.text());
        drop(c);
        assert_eq!(
            std::fs::metadata(&copy).unwrap().len(),
            kept as u64,
            "{framing}: the collator's cut"
        );

        let mut from = Proc::spawn(
            "tsbridge",
            &[
                "from-jetstream",
                "--nats",
                &urls,
                "--stream",
                &stream,
                "--framing",
                framing,
                "--sync",
                "data",
                "--exit-at-end",
                out.to_str().unwrap(),
            ],
        );
        let status = exit_code(&mut from, "from-jetstream");
        let text = from.log.text();
        assert_eq!(status, 0, "{framing}: {text}");
        let by_bridge = cut_line(&text);
        assert!(by_bridge.is_some(), "{framing}: no cut logged: {text}");
        assert_eq!(by_bridge, by_collator, "{framing}: the two cuts differ");
        assert!(
            std::fs::read(&out).unwrap() == data,
            "{framing}: the output after the cut is not the stream's messages"
        );
    }
}

/// tswrite with `args` and `input` on stdin (a file, so no feeder is needed): (exit code,
/// stdout, stderr).
fn tswrite(args: &[&str], input: &[u8]) -> (i32, String, String) {
    let (status, out, err) = tests::tswrite(args).input(input).run();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out).into_owned(),
        err,
    )
}

#[test]
fn tswrite_refuses_an_over_long_message_after_writing_what_came_before() {
    let dir = tempdir();
    let file = dir.path().join("log");
    let c = collator(&file, "u32be");
    let addr = c.addr().to_string();
    // One good message, then a prefix announcing 4 GiB: refused before any allocation.
    let mut input = Vec::new();
    framed::encode("u32be", b"fine", &mut input);
    input.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
    let (code, out, err) = tswrite(&["--framing", "u32be", &addr], &input);
    assert_eq!(code, 4, "{err}");
    assert_eq!(out, "0 0\n");
    assert!(
        err.contains("reading stdin") && err.contains("message at byte 8 claims 4294967295 bytes"),
        "{err}"
    );
    let mut want = Vec::new();
    framed::encode("u32be", b"fine", &mut want);
    assert_eq!(std::fs::read(&file).unwrap(), want);

    // A line over --max-message, in a delimiter framing.
    let (code, out, err) = tswrite(
        &["--framing", "newline", "--max-message", "10", &addr],
        b"short\n0123456789abcdef\n",
    );
    assert_eq!(code, 4, "{err}");
    assert_eq!(out, format!("{} 1\n", want.len()));
    assert!(
        err.contains("the message at byte 6 is over the limit of 10 bytes"),
        "{err}"
    );
}
