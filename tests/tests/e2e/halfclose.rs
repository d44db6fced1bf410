//! A client's FIN is not a hang-up: end to end, with the real binaries on 127.0.0.1.
//!
//! Clients that shut down their sending side after the request (`ncat`, `socat`, `nc -N`, a
//! program calling `shutdown(SHUT_WR)`) must receive the whole file and its growth, byte for
//! byte, exactly like clients that keep it open; the indexer must answer every complete query
//! that arrived before the FIN. Clients that are really gone must still be released while the
//! file is quiet: at once when their connection is reset, by keepalive when they closed
//! cleanly (TCP cannot tell that apart from a half-close until the server next sends).
//!
//! Expected bytes are the test's own copy of what it wrote; expected indexer answers come from
//! a naive scan of the log (`framed::naive_starts`). The external tools (`socat`, `nc` from
//! netcat-openbsd, `ncat`) are installed by `.ci/run`; when one is missing, the test says so
//! and skips it, except under CI (`CI` set), where a missing tool fails the test.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tests::framed::naive_starts;
use tests::*;

/// Connects, sends `request` and its newline, then shuts down the sending side, as `ncat`
/// does when its input ends.
fn half_closed(srv: &Proc, request: &str) -> TcpStream {
    let s = srv.request(request);
    s.shutdown(Shutdown::Write).unwrap();
    s
}

/// Asserts the server has not closed `s`: nothing to read for a moment, and no end of stream.
fn assert_still_open(s: &mut TcpStream) {
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    match s.read(&mut [0u8; 16]) {
        Ok(0) => panic!("the server closed a half-closed client"),
        Ok(n) => panic!("{n} unexpected bytes"),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "reading: {e}"
        ),
    }
}

/// Reads `n` bytes in `chunk`-sized reads with `pause` after each: a slow consumer, so the
/// server's sends block on a full socket buffer again and again.
fn read_slowly(s: &mut TcpStream, n: usize, chunk: usize, pause: Duration) -> Vec<u8> {
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut out = Vec::with_capacity(n);
    let mut buf = vec![0u8; chunk];
    while out.len() < n {
        let want = chunk.min(n - out.len());
        let got = s.read(&mut buf[..want]).expect("reading slowly");
        assert!(got > 0, "closed after {} of {n} bytes", out.len());
        out.extend_from_slice(&buf[..got]);
        std::thread::sleep(pause);
    }
    out
}

#[test]
fn shutdown_right_after_the_header_gets_the_whole_file_and_its_growth() {
    let dir = tempdir();
    let path = dir.path().join("log");
    let data = random_bytes(1 << 20, 1);
    append(&path, &data);
    let srv = tailsrv(&path).start();
    for header in ["0", "-1000", "5000"] {
        let mut s = half_closed(&srv, header);
        let from = match header {
            "-1000" => data.len() - 1000,
            h => h.parse().unwrap(),
        };
        assert_eq!(
            read_exact(&mut s, data.len() - from),
            &data[from..],
            "{header}"
        );
        assert_still_open(&mut s);
    }
    // One more, then the file grows twice while it is half-closed.
    let mut s = half_closed(&srv, "0");
    assert_eq!(read_exact(&mut s, data.len()), data);
    assert_still_open(&mut s);
    let mut all = data;
    for seed in [2, 3] {
        let more = random_bytes(70_000, seed);
        append(&path, &more);
        all.extend_from_slice(&more);
        assert_eq!(read_exact(&mut s, more.len()), more);
    }
    assert_still_open(&mut s);
    // Shutting down in the middle of the stream changes nothing either.
    let mut late = srv.request("0");
    let head = read_exact(&mut late, 100_000);
    late.shutdown(Shutdown::Write).unwrap();
    let rest = read_exact(&mut late, all.len() - head.len());
    assert_eq!([head, rest].concat(), all);
    assert_still_open(&mut late);
}

#[test]
fn a_slow_half_closed_reader_of_a_large_file_gets_every_byte() {
    let dir = tempdir();
    let path = dir.path().join("log");
    let data = random_bytes(6 << 20, 4);
    append(&path, &data);
    let srv = tailsrv(&path).start();
    let mut s = half_closed(&srv, "0");
    // ~1.5 s of reading: the kernel's buffers fill and drain hundreds of times.
    let got = read_slowly(&mut s, data.len(), 32 << 10, Duration::from_millis(8));
    assert!(got == data, "bytes differ from the file");
    let more = random_bytes(3 << 20, 5);
    append(&path, &more);
    let got = read_slowly(&mut s, more.len(), 32 << 10, Duration::from_millis(8));
    assert!(got == more, "growth differs from what was appended");
    assert_still_open(&mut s);
}

#[test]
fn half_closed_before_the_file_exists_and_in_directory_mode() {
    let dir = tempdir();
    // Single-file mode, the file absent: the client waits, half-closed, and is served.
    let path = dir.path().join("later.log");
    let srv = tailsrv(&path).start();
    let mut s = half_closed(&srv, "0");
    assert_still_open(&mut s);
    let data = random_bytes(300_000, 6);
    append(&path, &data);
    assert_eq!(read_exact(&mut s, data.len()), data);
    assert_still_open(&mut s);
    drop(srv);

    // Directory mode: `stream PATH from byte N`, then FIN.
    let root = dir.path().join("served");
    std::fs::create_dir_all(root.join("app")).unwrap();
    let file = root.join("app/events.log");
    append(&file, &data);
    let srv = tailsrv(&root).start();
    let mut s = half_closed(&srv, "stream app/events.log from byte 1000");
    assert_eq!(read_exact(&mut s, data.len() - 1000), &data[1000..]);
    let more = random_bytes(50_000, 7);
    append(&file, &more);
    assert_eq!(read_exact(&mut s, more.len()), more);
    assert_still_open(&mut s);
    // `list` still ends with the listing, FIN or not.
    let mut l = half_closed(&srv, "list");
    assert_eq!(read_to_end(&mut l), b"app/events.log\n");
}

/// A FIN before any byte of a request is a hang-up (a FIN after part of one completes it, as a
/// newline would: `newcomer.rs`).
#[test]
fn a_fin_before_any_request_byte_is_a_hang_up() {
    let dir = tempdir();
    let path = dir.path().join("log");
    append(&path, b"x");
    let srv = tailsrv(&path).start();
    let mut probe = half_closed(&srv, "0");
    read_exact(&mut probe, 1);
    std::thread::sleep(Duration::from_millis(300)); // see `hold_clients`
    let base = srv.fd_count();
    let partial: Vec<TcpStream> = (0..10)
        .map(|_| {
            let s = srv.connect();
            s.shutdown(Shutdown::Write).unwrap();
            s
        })
        .collect();
    // Nobody is ever answered: no request, no bytes. And the server lets go of them.
    assert!(
        eventually(PATIENCE, || srv.fd_count() <= base),
        "{} fds, {base} before",
        srv.fd_count()
    );
    drop(partial);
}

// ---------------------------------------------------------------------------------------------
// Clients that are really gone are released.

/// Connects `n` clients with `request` (half-closing them if `half`), waits until each has
/// read `len` bytes and the server holds them all, and returns them with the server's fd
/// count from before (the first client is a probe, kept open, not counted).
fn hold_clients(srv: &Proc, n: usize, half: bool, len: usize) -> (Vec<TcpStream>, usize) {
    // A half-closed probe first: the server's epoll set for half-closed clients is made on
    // the first one and kept, and must not count as a client's descriptor.
    let mut probe = half_closed(srv, "0");
    read_exact(&mut probe, len);
    std::thread::sleep(Duration::from_millis(300));
    let base = srv.fd_count();
    let mut clients: Vec<TcpStream> = (0..n)
        .map(|_| {
            if half {
                half_closed(srv, "0")
            } else {
                srv.request("0")
            }
        })
        .collect();
    for c in &mut clients {
        read_exact(c, len);
    }
    assert!(
        eventually(PATIENCE, || srv.fd_count() >= base + n),
        "server does not hold the {n} clients"
    );
    clients.insert(0, probe);
    (clients, base)
}

/// Waits until the server is back to `base` descriptors; returns how long that took.
fn released(srv: &Proc, base: usize, within: Duration) -> Duration {
    let t0 = Instant::now();
    assert!(
        eventually(within, || srv.fd_count() <= base),
        "not released within {within:?}: {} fds open, {base} before",
        srv.fd_count()
    );
    t0.elapsed()
}

#[test]
fn reset_clients_are_released_at_once_while_the_file_is_quiet() {
    let dir = tempdir();
    let path = dir.path().join("log");
    append(&path, b"quiet");
    let srv = tailsrv(&path).start();
    // Half-closed first: these are watched for resets only, not for readability.
    for half in [true, false] {
        let (mut clients, base) = hold_clients(&srv, 50, half, 5);
        let probe = clients.remove(0);
        clients.into_iter().for_each(reset);
        let took = released(&srv, base, Duration::from_secs(5));
        println!("50 reset clients (half-closed: {half}) released in {took:?}");
        drop(probe);
    }
}

#[test]
fn cleanly_closed_clients_are_released_at_the_next_write() {
    let dir = tempdir();
    let path = dir.path().join("log");
    append(&path, b"quiet");
    let srv = tailsrv(&path).start();
    let (mut clients, base) = hold_clients(&srv, 50, false, 5);
    let _probe = clients.remove(0);
    drop(clients); // FIN only: from the server's side, a half-close
    std::thread::sleep(Duration::from_millis(500));
    append(&path, b"!"); // the closed sockets answer these bytes with a reset
    let took = released(&srv, base, Duration::from_secs(5));
    println!("50 cleanly closed clients released {took:?} after the next append");
}

/// The documented bound: a cleanly closed client of a quiet file is released by keepalive
/// (first probe 60 s after its FIN, then every 10 s; the closed socket's FIN-WAIT-2 remnant
/// acknowledges probes for `net.ipv4.tcp_fin_timeout`, 60 s by default, then answers with a
/// reset). So within 60 + 10 s plus slack. We allow 130 s: the server's own keepalive gives
/// up by 60 + 6 × 10 s whatever the client's side does, and a loaded machine delays both (a
/// 90 s bound failed once while five builds shared two cores). This test takes over a minute.
#[test]
fn cleanly_closed_clients_are_released_by_keepalive_while_the_file_is_quiet() {
    let dir = tempdir();
    let path = dir.path().join("log");
    append(&path, b"quiet");
    let srv = tailsrv(&path).start();
    let (mut clients, base) = hold_clients(&srv, 20, false, 5);
    let _probe = clients.remove(0);
    drop(clients);
    let took = released(&srv, base, Duration::from_secs(130));
    println!("20 cleanly closed clients of a quiet file released by keepalive in {took:?}");
}

// ---------------------------------------------------------------------------------------------
// External clients: the README's tools.

/// Whether `tool` is installed; if not, says so, and fails under CI, where `.ci/run`
/// installs it.
fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is not installed (.ci/run installs it)"
        );
        println!("note: {tool} is not installed; skipping its case");
    }
    found
}

/// An external client: `input` on its stdin (then end of input), its stdout collected.
fn tool(program: &str, args: &[String], input: &[u8]) -> Proc {
    Spawn::tool(program).args(args).input(input).spawn()
}

/// Waits until `tool` has written `n` bytes (and a moment more, to catch extra ones).
fn output_of(tool: &Proc, n: usize) -> Vec<u8> {
    tool.wait_len(n);
    std::thread::sleep(Duration::from_millis(100));
    tool.output()
}

#[test]
fn socat_nc_and_ncat_get_the_whole_file_and_its_growth() {
    let dir = tempdir();
    let path = dir.path().join("log");
    // Larger than every socket buffer on the way, as in the issue (15.7 MB there).
    let data = random_bytes(12 << 20, 8);
    append(&path, &data);
    let srv = tailsrv(&path).start();
    let port = srv.addr().port().to_string();
    // Each of these shuts down its sending side once its input (`0\n`) ends.
    let tools: [(&str, Vec<String>); 3] = [
        // socat stops 0.5 s after one side ends unless told otherwise (-t).
        (
            "socat",
            vec![
                "-t".into(),
                "3600".into(),
                "-".into(),
                format!("TCP:{LOOPBACK}:{port}"),
            ],
        ),
        ("nc", vec!["-N".into(), LOOPBACK.into(), port.clone()]),
        ("ncat", vec![LOOPBACK.into(), port.clone()]),
    ];
    let mut running = Vec::new();
    for (program, args) in &tools {
        if have(program) {
            running.push((*program, tool(program, args, b"0\n")));
        }
    }
    for (program, tool) in &running {
        assert!(
            output_of(tool, data.len()) == data,
            "{program}: bytes differ"
        );
    }
    let more = random_bytes(100_000, 9);
    append(&path, &more);
    let all = [data, more].concat();
    for (program, tool) in &running {
        assert!(
            output_of(tool, all.len()) == all,
            "{program}: growth differs"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The indexer answers everything that arrived before the FIN, then closes.

/// A newline log of `n` messages of random lengths.
fn newline_log(n: usize, seed: u64) -> Vec<u8> {
    let lengths = random_bytes(n, seed);
    let mut log = Vec::new();
    for (i, len) in lengths.into_iter().enumerate() {
        log.extend_from_slice(format!("message {i} ").as_bytes());
        log.extend(std::iter::repeat_n(b'x', len as usize));
        log.push(b'\n');
    }
    log
}

/// Queries (about `path` in directory mode) and the answers a naive scan of `log` expects:
/// `offset-of` every message and one past, `message-at` every message's first byte, `count`
/// every 100 messages.
fn queries(path: Option<&str>, log: &[u8]) -> (String, Vec<String>) {
    let (starts, end) = naive_starts("newline", log);
    let (prefix, count) = match path {
        Some(p) => (format!("{p} "), format!("count {p}\n")),
        None => (String::new(), "count\n".to_string()),
    };
    let mut text = String::new();
    let mut want = Vec::new();
    for (i, s) in starts.iter().enumerate() {
        text += &format!("offset-of {prefix}{i}\nmessage-at {prefix}{s}\n");
        want.push(s.to_string());
        want.push(i.to_string());
        if i % 100 == 0 {
            text += &count;
            want.push(starts.len().to_string());
        }
    }
    text += &format!("offset-of {prefix}{}\n", starts.len());
    want.push(end.to_string());
    (text, want)
}

/// Sends `text` and a FIN from another thread (so nothing deadlocks on full buffers), reads
/// every answer until the indexer closes.
fn ask_then_fin(p: &Proc, text: String) -> Vec<String> {
    let mut s = p.connect();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        w.write_all(text.as_bytes()).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let got = read_to_end(&mut s);
    writer.join().unwrap();
    String::from_utf8(got)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn indexer_answers_pipelined_queries_sent_with_a_fin_single_file() {
    let dir = tempdir();
    let path = dir.path().join("log");
    let log = newline_log(5000, 10);
    append(&path, &log);
    let p = indexer(&path).start();
    let mut c = LineClient::new(&p);
    c.wait_count("count", 5000);
    // ~10,000 queries, ~190 KB: several reads, all with the FIN right behind them.
    let (text, want) = queries(None, &log);
    assert_eq!(ask_then_fin(&p, text.clone()), want);
    // The last query without its newline is answered too.
    let mut cut = text.clone();
    cut.pop();
    assert_eq!(ask_then_fin(&p, cut), want);
    // The README's form, with each netcat.
    for (tool, args) in [("nc", vec!["-N"]), ("ncat", vec![])] {
        if have(tool) {
            let mut args: Vec<String> = args.into_iter().map(String::from).collect();
            args.extend([LOOPBACK.to_string(), p.addr().port().to_string()]);
            let mut t = self::tool(tool, &args, b"count\noffset-of 2\n");
            let expect = format!("5000\n{}\n", naive_starts("newline", &log).0[2]);
            assert_eq!(output_of(&t, expect.len()), expect.as_bytes(), "{tool}");
            let status = t.wait_exit(PATIENCE).expect("still running");
            assert!(status.success(), "{tool} did not exit cleanly");
        }
    }
}

#[test]
fn indexer_answers_pipelined_queries_sent_with_a_fin_directory_mode() {
    let dir = tempdir();
    let root = dir.path().join("served");
    std::fs::create_dir_all(root.join("app")).unwrap();
    // Never queried before: the first query makes the indexer build the index and wait for
    // it, so the FIN is in long before the first answer is written.
    let log = newline_log(20_000, 11);
    append(&root.join("app/events.log"), &log);
    let p = indexer(&root)
        .arg("--index-dir")
        .arg(dir.path().join("indexes"))
        .start();
    let (text, want) = queries(Some("app/events.log"), &log);
    let got = ask_then_fin(&p, text);
    assert_eq!(got.len(), want.len(), "every query answered");
    assert_eq!(got, want);
}
