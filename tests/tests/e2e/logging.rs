//! Logging end to end: every binary logs to stderr (JSON lines when stderr is not a terminal,
//! text with `--log-format text`), nothing to stdout; `listening on` survives `-q`; a closed
//! stderr does not stop the server; fatal errors are logged and end in a non-zero status.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::{ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tests::*;

/// The log line that says `listening on`.
fn listening_line(p: &Proc) -> String {
    let rest = p
        .log
        .wait_for("listening on", PATIENCE)
        .expect("a listening line");
    let text = p.log.text();
    let at = text.len() - rest.len();
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let end = at + rest.find('\n').unwrap_or(rest.len());
    text[start..end].to_owned()
}

/// Parses a JSON log line, failing the test with the line if it is not one.
fn json(line: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
    assert!(v["time"].is_string(), "{line}");
    assert!(v["level"].is_string(), "{line}");
    assert!(v["msg"].is_string(), "{line}");
    v
}

/// Runs `name` to its exit (within [`PATIENCE`]): status, stdout, stderr.
fn run_to_exit(name: &str, args: &[&str]) -> (ExitStatus, String, String) {
    let (status, out, err) = Spawn::bin(name).args(args).run();
    (status, String::from_utf8_lossy(&out).into_owned(), err)
}

#[test]
fn a_closed_stderr_does_not_stop_the_server() {
    let dir = tempdir();
    let path = dir.path().join("log");
    let data = random_bytes(100_000, 7);
    append(&path, &data[..60_000]);
    // -v: every client is logged (debug), so the server writes to the closed pipe below.
    let mut child = tailsrv(&path)
        .arg("-v")
        .command()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting tailsrv");
    let mut stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();

    // Read stderr up to the listening line on a thread (a hung server fails the test, it
    // does not hang it), and get the pipe back to close it.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stderr);
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                let _ = tx.send((lines, None));
                return;
            }
            let done = line.contains("listening on");
            lines.push(line);
            if done {
                let _ = tx.send((lines, Some(reader)));
                return;
            }
        }
    });
    let (lines, reader) = rx.recv_timeout(PATIENCE).expect("a listening line in time");
    let reader = reader.unwrap_or_else(|| panic!("stderr ended first: {lines:?}"));
    // Not a terminal: JSON, one object per line.
    for line in &lines {
        json(line);
    }
    let listening = json(lines.last().unwrap());
    assert_eq!(listening["level"], "info");
    let addr: std::net::SocketAddr = listening["addr"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        listening["msg"].as_str().unwrap(),
        format!("listening on {addr}")
    );

    // Nobody reads the log any more: the next lines get EPIPE.
    drop(reader);
    for round in 0..3 {
        let mut c = std::net::TcpStream::connect(addr).expect("connect");
        std::io::Write::write_all(&mut c, b"0\n").unwrap();
        assert!(
            read_exact(&mut c, 60_000) == data[..60_000],
            "round {round}"
        );
        if round == 0 {
            append(&path, &data[60_000..]);
        }
        assert!(
            read_exact(&mut c, 40_000) == data[60_000..],
            "round {round}"
        );
        assert!(child.try_wait().unwrap().is_none(), "tailsrv exited");
    }
    // The server also logs a client leaving; it is still there after that too.
    std::thread::sleep(Duration::from_millis(200));
    assert!(child.try_wait().unwrap().is_none(), "tailsrv exited");

    child.kill().unwrap();
    child.wait().unwrap();
    let mut out = Vec::new();
    stdout.read_to_end(&mut out).unwrap();
    assert!(out.is_empty(), "tailsrv wrote to stdout: {out:?}");
}

#[test]
fn quiet_still_says_where_it_listens() {
    let dir = tempdir();
    let path = dir.path().join("log");
    for quiet in ["-q", "-qq"] {
        let p = tailsrv(&path).arg(quiet).start();
        let v = json(&listening_line(&p));
        assert_eq!(v["msg"], format!("listening on {}", p.addr()));
        // Nothing else at info: `file does not exist yet` is an info line.
        assert!(!p.log.text().contains("does not exist"), "{}", p.log.text());
    }
    // The indexer too.
    let p = indexer(&path).arg("-q").start();
    json(&listening_line(&p));
}

#[test]
fn text_format_is_one_readable_line() {
    let dir = tempdir();
    let path = dir.path().join("log");
    let p = tailsrv(&path).args(["--log-format", "text"]).start();
    let line = listening_line(&p);
    // 2026-11-26T00:47:32.123Z INFO  listening on 127.0.0.1:4321 addr=127.0.0.1:4321
    let (time, rest) = line.split_once(' ').unwrap();
    assert_eq!(time.len(), 24, "{line}");
    assert!(
        time.as_bytes()[10] == b'T' && time.ends_with('Z') && time[..4].parse::<u32>().is_ok(),
        "{line}"
    );
    let addr = p.addr();
    assert_eq!(rest, format!("INFO  listening on {addr} addr={addr}"));
    assert!(!p.log.text().contains('{'), "{}", p.log.text());
}

/// The default build (the one the README's test command makes) has no journal support, and
/// says so plainly.
#[test]
fn journald_without_the_feature_is_a_clear_usage_error() {
    let dir = tempdir();
    let path = dir.path().join("log");
    let (status, out, err) = run_to_exit(
        "tailsrv",
        &["--journald", "-p", "0", path.to_str().unwrap()],
    );
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(out.is_empty(), "{out}");
    assert_eq!(
        err,
        "error: --journald needs a build with the systemd feature: \
         cargo build --release -p tailsrv --features systemd\n"
    );
    let (status, _, err) = run_to_exit("tailsrv-indexer", &["--journald", "-p", "0", "x"]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("-p tailsrv-indexer --features systemd"),
        "{err}"
    );
}

/// Every binary's fatal error is an `error` log line on stderr and a non-zero status.
#[test]
fn fatal_errors_are_logged_on_stderr() {
    let dir = tempdir();
    let path = dir.path().join("log");
    let path = path.to_str().unwrap();
    let taken = TcpListener::bind((LOOPBACK, 0)).unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let dead = loopback(free_port()).to_string();
    let missing_dir = dir.path().join("no/such/dir/replica");
    let cases: [(&str, Vec<&str>, i32, &str); 4] = [
        (
            "tailsrv",
            vec!["-p", &port, "--bind", LOOPBACK, path],
            1,
            "binding",
        ),
        (
            "tailsrv-indexer",
            vec!["-p", &port, "--bind", LOOPBACK, path],
            1,
            "binding",
        ),
        ("tscat", vec!["--no-retry", &dead], 1, &dead),
        (
            "tsmirror",
            vec![&dead, missing_dir.to_str().unwrap()],
            1,
            "replica",
        ),
    ];
    for (name, args, code, needle) in cases {
        let (status, out, err) = run_to_exit(name, &args);
        assert_eq!(status.code(), Some(code), "{name}: {err}");
        assert!(out.is_empty(), "{name} wrote to stdout: {out}");
        let last = err
            .lines()
            .last()
            .unwrap_or_else(|| panic!("{name}: no log"));
        let v = json(last);
        assert_eq!(v["level"], "error", "{name}: {last}");
        assert!(last.contains(needle), "{name}: no {needle:?} in {last}");
    }
}
