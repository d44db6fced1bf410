//! tailsrv end to end: the real binary, real TCP on 127.0.0.1, files in a temp directory.
//! Expected bytes always come from the test's own copy of what it wrote to the file.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use rustix::process::Signal;
use tests::*;

/// Starts tailsrv on `path` with extra flags, on a free loopback port.
fn serve(path: &Path, extra: &[&str]) -> Proc {
    tailsrv(path).args(extra).start()
}

#[test]
fn every_header_form() {
    let dir = tempdir();
    let path = dir.path().join("log");
    let data = random_bytes(10_000, 1);
    append(&path, &data);
    let srv = serve(&path, &["-v"]);

    let cases: &[(&str, usize)] = &[
        ("0", 0),
        ("1", 1),
        ("9999", 9999),
        ("10000", 10000),
        ("-1", 9999),
        ("-2500", 7500),
        ("-10000", 0),
        ("-99999", 0), // longer than the file: the whole file
        ("-0", 10000),
        (" 42 ", 42),
    ];
    let mut clients: Vec<(TcpStream, usize)> = cases
        .iter()
        .map(|(h, from)| (srv.request(h), *from))
        .collect();
    // \r\n line endings are accepted too.
    let mut crlf = srv.connect();
    crlf.write_all(b"5000\r\n").unwrap();
    clients.push((crlf, 5000));
    // The `-0` client must be placed before the append below: wait for the server to say so.
    assert!(srv
        .log
        .wait_count("client connected", clients.len(), PATIENCE));

    for (s, from) in &mut clients {
        assert_eq!(read_exact(s, 10_000 - *from), &data[*from..], "from {from}");
    }
    // Everyone keeps following: append and everyone gets exactly the new bytes.
    let more = random_bytes(3_000, 2);
    append(&path, &more);
    for (s, _) in &mut clients {
        assert_eq!(read_exact(s, more.len()), more);
    }
}

#[test]
fn waits_for_an_offset_beyond_the_end() {
    let dir = tempdir();
    let path = dir.path().join("log");
    let mut all = random_bytes(100, 3);
    append(&path, &all);
    let srv = serve(&path, &[]);
    let mut s = srv.request("250");
    // Grow the file past 250 in small steps; the client must get exactly bytes 250.. .
    for i in 0..10 {
        let chunk = random_bytes(30, 10 + i);
        append(&path, &chunk);
        all.extend_from_slice(&chunk);
    }
    assert_eq!(read_exact(&mut s, all.len() - 250), &all[250..]);
}

#[test]
fn growth_is_followed_byte_exact() {
    let dir = tempdir();
    let path = dir.path().join("log");
    std::fs::write(&path, b"").unwrap();
    let srv = serve(&path, &[]);
    let mut readers: Vec<TcpStream> = (0..4).map(|_| srv.request("0")).collect();
    let mut expected = Vec::new();
    // Appends of many sizes, from one byte to a couple of MiB, read as they come.
    for (i, size) in [1usize, 7, 4096, 65_537, 1, 2 << 20, 13, 300_000]
        .iter()
        .enumerate()
    {
        let chunk = random_bytes(*size, 100 + i as u64);
        append(&path, &chunk);
        expected.extend_from_slice(&chunk);
        for r in &mut readers {
            assert_eq!(read_exact(r, chunk.len()), chunk, "append #{i}");
        }
    }
    // A late joiner from 0 gets all of it.
    let mut late = srv.request("0");
    assert_eq!(read_exact(&mut late, expected.len()), expected);
}

#[test]
fn bad_headers_get_one_error_line() {
    let dir = tempdir();
    let path = dir.path().join("log");
    append(&path, b"secret data\n");
    let srv = serve(&path, &["--header-timeout", "0.5"]);

    for (header, expect) in [
        ("abc", "not an integer"),
        ("-", "not an integer"),
        ("+5", "not an integer"),
        ("1 2", "not an integer"),
        ("", "not an integer"),
        ("18446744073709551616", "out of range"),
    ] {
        let mut s = srv.request(header);
        let answer = read_text(&mut s);
        assert!(
            answer.starts_with("error: bad-request: "),
            "{header:?} -> {answer:?}"
        );
        assert!(answer.contains(expect), "{header:?} -> {answer:?}");
        assert_eq!(answer.lines().count(), 1, "{header:?} -> {answer:?}");
    }

    // 65 bytes and no newline: refused without waiting for the timeout. The client keeps
    // sending; the error line must still arrive intact.
    let mut s = srv.connect();
    s.write_all(&[b'1'; 65]).unwrap();
    let _ = s.write_all(&[b'1'; 4000]);
    let answer = read_text(&mut s);
    assert!(
        answer.starts_with("error: too-long: request longer than 64 bytes"),
        "{answer:?}"
    );

    // A complete header within 64 bytes is fine even with junk after the newline.
    let mut s = srv.connect();
    s.write_all(b"0\nthis is ignored\n").unwrap();
    assert_eq!(read_exact(&mut s, 12), b"secret data\n");

    // Nothing at all: the header timeout answers.
    let mut s = srv.connect();
    let answer = read_text(&mut s);
    assert!(
        answer.starts_with("error: timeout: no complete request line within 0.5s"),
        "{answer:?}"
    );

    // Half a header, then silence: same.
    let mut s = srv.connect();
    s.write_all(b"12").unwrap();
    let answer = read_text(&mut s);
    assert!(
        answer.starts_with("error: timeout: no complete request line"),
        "{answer:?}"
    );
}

#[test]
fn clients_that_reset_are_released_while_the_file_is_quiet() {
    let dir = tempdir();
    let path = dir.path().join("log");
    append(&path, b"x");
    let srv = serve(&path, &[]);
    // Settle: one client served, so the server's own fds are all open.
    let mut probe = srv.request("0");
    read_exact(&mut probe, 1);
    let base = srv.fd_count();

    let mut clients: Vec<TcpStream> = (0..50).map(|_| srv.request("0")).collect();
    for c in &mut clients {
        read_exact(c, 1);
    }
    assert!(
        srv.fd_count() >= base + 50,
        "server does not hold the 50 clients"
    );
    // Gone for real: a reset. (A FIN alone is not a hang-up; halfclose.rs covers
    // half-closed and cleanly closed clients.)
    clients.into_iter().for_each(reset);
    // Nothing is written to the file: only watching the sockets can notice.
    assert!(
        eventually(PATIENCE, || srv.fd_count() <= base),
        "fds not released: {} open, {} before",
        srv.fd_count(),
        base
    );
    // Hang-up (a reset) before the header is complete is released too. (A clean close there
    // ends the header as a newline would: newcomer.rs.)
    let half: Vec<TcpStream> = (0..10)
        .map(|_| {
            let mut s = srv.connect();
            s.write_all(b"1").unwrap();
            s
        })
        .collect();
    assert!(eventually(PATIENCE, || srv.fd_count() >= base + 10));
    half.into_iter().for_each(reset);
    assert!(eventually(PATIENCE, || srv.fd_count() <= base));
}

#[test]
fn a_stalled_client_does_not_hold_back_the_others() {
    let dir = tempdir();
    let path = dir.path().join("log");
    let data = random_bytes(32 << 20, 4);
    append(&path, &data);
    let srv = serve(&path, &[]);
    // This one asks for everything and never reads: its socket buffers fill up.
    let stalled = srv.request("0");
    let mut fast: Vec<TcpStream> = (0..3).map(|_| srv.request("0")).collect();
    for f in &mut fast {
        assert_eq!(read_exact(f, data.len()), data);
    }
    let more = random_bytes(1 << 20, 5);
    append(&path, &more);
    for f in &mut fast {
        assert_eq!(read_exact(f, more.len()), more);
    }
    drop(stalled);
}

#[test]
fn absent_file_is_served_once_created() {
    let dir = tempdir();
    let path = dir.path().join("not-yet");
    let srv = serve(&path, &[]);
    let mut from_start = srv.request("0");
    let mut from_end = srv.request("-3");
    let data = random_bytes(5000, 6);
    // Create it the way loggers do: open(O_CREAT), write.
    append(&path, &data);
    assert_eq!(read_exact(&mut from_start, data.len()), data);
    // `-3` is resolved against the file when the server places that client: as the file
    // first appeared (which may already hold all 5000 bytes or only part of them), or, if the
    // server reads that client's header late, after the append below. Either way it gets
    // the last 3 bytes it saw and everything after them: a suffix of the file that is at
    // least 3 bytes long and runs to the file's end.
    let more = b"tail!".to_vec();
    append(&path, &more);
    let mut whole = data.clone();
    whole.extend_from_slice(&more);
    let mut got = Vec::new();
    from_end.set_read_timeout(Some(PATIENCE)).unwrap();
    while !(got.len() >= 3 && whole.ends_with(&got)) {
        let mut buf = [0u8; 8192];
        let n = from_end.read(&mut buf).unwrap();
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
        assert!(got.len() <= whole.len(), "more bytes than the file holds");
    }
}

#[test]
fn created_by_rename_into_place() {
    let dir = tempdir();
    let path = dir.path().join("log");
    let srv = serve(&path, &[]);
    let mut c = srv.request("0");
    let tmp = dir.path().join("log.tmp");
    append(&tmp, b"renamed in\n");
    std::fs::rename(&tmp, &path).unwrap();
    assert_eq!(read_exact(&mut c, 11), b"renamed in\n");
}

#[test]
fn moved_or_deleted_file_stops_the_server_cleanly() {
    type Remove = fn(&Path);
    let cases: [(&str, Remove); 2] = [
        ("moved", |p| {
            std::fs::rename(p, p.with_extension("1")).unwrap()
        }),
        ("deleted", |p| std::fs::remove_file(p).unwrap()),
    ];
    for (how, remove) in cases {
        let dir = tempdir();
        let path = dir.path().join("log");
        append(&path, b"hello\n");
        let mut srv = serve(&path, &[]);
        let mut c = srv.request("0");
        assert_eq!(read_exact(&mut c, 6), b"hello\n");
        remove(&path);
        let status = srv.wait_exit(PATIENCE).expect("server did not exit");
        assert!(status.success(), "{how}: {status:?}");
        let log = srv.log.text();
        assert!(log.contains(&format!("file was {how}")), "{log}");
        assert_eq!(read_to_end(&mut c), b"", "{how}");
    }
}

#[test]
fn linger_keeps_serving_a_deleted_file() {
    let dir = tempdir();
    let path = dir.path().join("log");
    // A writer that keeps the file open across the unlink, like a daemon whose log was removed.
    let mut writer = std::fs::File::create(&path).unwrap();
    writer.write_all(b"before\n").unwrap();
    let mut srv = serve(&path, &["--linger-after-file-is-gone"]);
    let mut c = srv.request("0");
    assert_eq!(read_exact(&mut c, 7), b"before\n");
    std::fs::remove_file(&path).unwrap();
    assert!(srv.log.wait_for("file was deleted", PATIENCE).is_some());
    writer.write_all(b"after\n").unwrap();
    assert_eq!(read_exact(&mut c, 6), b"after\n");
    // New clients still get everything the inode holds.
    let mut late = srv.request("0");
    assert_eq!(read_exact(&mut late, 13), b"before\nafter\n");
    assert!(srv.wait_exit(Duration::ZERO).is_none(), "server exited");
}

#[test]
fn linger_keeps_serving_a_moved_file() {
    let dir = tempdir();
    let path = dir.path().join("log");
    let mut writer = std::fs::File::create(&path).unwrap();
    writer.write_all(b"one\n").unwrap();
    let mut srv = serve(&path, &["--linger-after-file-is-gone"]);
    let mut c = srv.request("0");
    assert_eq!(read_exact(&mut c, 4), b"one\n");
    std::fs::rename(&path, dir.path().join("log.1")).unwrap();
    assert!(srv.log.wait_for("file was moved", PATIENCE).is_some());
    writer.write_all(b"two\n").unwrap();
    assert_eq!(read_exact(&mut c, 4), b"two\n");
    assert!(srv.wait_exit(Duration::ZERO).is_none(), "server exited");
}

#[test]
fn truncation_disconnects_followers_and_never_sends_stale_bytes() {
    let dir = tempdir();
    let path = dir.path().join("log");
    let old = random_bytes(4096, 7);
    append(&path, &old);
    let mut srv = serve(&path, &[]);
    let mut c = srv.request("0");
    assert_eq!(read_exact(&mut c, old.len()), old);

    // copytruncate-style rotation: the file drops to zero.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    // The follower is closed without being sent anything more.
    assert_eq!(read_to_end(&mut c), b"");
    assert!(srv.log.wait_for("truncated", PATIENCE).is_some());

    // The server goes on and serves the file's new content.
    let new = random_bytes(100, 8);
    append(&path, &new);
    let mut c2 = srv.request("0");
    assert_eq!(read_exact(&mut c2, new.len()), new);
    assert!(srv.wait_exit(Duration::ZERO).is_none());
}

#[test]
fn thousand_concurrent_clients_get_identical_bytes() {
    const CLIENTS: usize = 1000;
    raise_fd_limit();
    let dir = tempdir();
    let path = dir.path().join("log");
    let first = random_bytes(20_000, 9);
    append(&path, &first);
    let srv = serve(&path, &[]);
    let mut clients: Vec<(TcpStream, usize)> = (0..CLIENTS)
        .map(|i| {
            let from = (i * 37) % first.len();
            (srv.request(from.to_string()), from)
        })
        .collect();
    let second = random_bytes(30_000, 10);
    append(&path, &second);
    let mut all = first.clone();
    all.extend_from_slice(&second);
    // Read them in a few threads; the kernel buffers each socket's share meanwhile.
    let chunks: Vec<Vec<(TcpStream, usize)>> = {
        let mut v: Vec<Vec<_>> = (0..8).map(|_| Vec::new()).collect();
        for (i, c) in clients.drain(..).enumerate() {
            v[i % 8].push(c);
        }
        v
    };
    std::thread::scope(|scope| {
        for chunk in chunks {
            let all = &all;
            scope.spawn(move || {
                for (mut s, from) in chunk {
                    assert_eq!(
                        read_exact(&mut s, all.len() - from),
                        &all[from..],
                        "from {from}"
                    );
                }
            });
        }
    });
}

#[test]
fn over_max_clients_is_refused_with_an_error() {
    let dir = tempdir();
    let path = dir.path().join("log");
    append(&path, b"abc");
    let srv = serve(&path, &["--max-clients", "2"]);
    let mut a = srv.request("0");
    let mut b = srv.request("0");
    assert_eq!(read_exact(&mut a, 3), b"abc");
    assert_eq!(read_exact(&mut b, 3), b"abc");
    let mut c = srv.request("0");
    assert_eq!(read_text(&mut c), "error: busy: too many clients\n");
    // A slot frees up when a client leaves.
    reset(a);
    assert!(eventually(PATIENCE, || {
        let mut d = srv.request("0");
        let mut buf = [0u8; 3];
        d.set_read_timeout(Some(PATIENCE)).unwrap();
        d.read_exact(&mut buf).is_ok() && &buf == b"abc"
    }));
}

#[test]
fn out_of_file_descriptors_backs_off_and_recovers() {
    let dir = tempdir();
    let path = dir.path().join("log");
    append(&path, b"fd!");
    let srv = tailsrv(&path).fd_limit(40).start();
    // Far more clients than the server has fds for: the excess waits in the listen backlog.
    let mut clients: Vec<TcpStream> = (0..80).map(|_| srv.request("0")).collect();
    assert!(
        srv.log.wait_for("cannot accept", PATIENCE).is_some(),
        "{}",
        srv.log.text()
    );
    // Release the ones that were served; the waiting ones must be served after.
    let mut served = 0;
    while !clients.is_empty() {
        let mut waiting = Vec::new();
        for mut c in clients.drain(..) {
            c.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut buf = [0u8; 3];
            match c.read_exact(&mut buf) {
                Ok(()) => {
                    assert_eq!(&buf, b"fd!");
                    served += 1;
                    reset(c);
                }
                Err(_) => waiting.push(c),
            }
        }
        clients = waiting;
        assert!(served > 0, "nobody was served");
    }
    assert_eq!(served, 80);
    assert!(srv.log.wait_for("accepting", PATIENCE).is_some());
}

#[test]
fn sigterm_and_sigint_stop_cleanly() {
    for sig in [Signal::TERM, Signal::INT] {
        let dir = tempdir();
        let path = dir.path().join("log");
        append(&path, b"x");
        let mut srv = serve(&path, &[]);
        let mut c = srv.request("0");
        assert_eq!(read_exact(&mut c, 1), b"x");
        srv.signal(sig);
        let status = srv.wait_exit(PATIENCE).expect("did not exit");
        assert!(status.success(), "{sig:?}: {status:?}");
        assert_eq!(read_to_end(&mut c), b"");
    }
}

#[test]
fn sighup_is_ignored() {
    let dir = tempdir();
    let path = dir.path().join("log");
    append(&path, b"x");
    let mut srv = serve(&path, &[]);
    let mut c = srv.request("0");
    assert_eq!(read_exact(&mut c, 1), b"x");
    srv.signal(Signal::HUP);
    assert!(srv.log.wait_for("SIGHUP", PATIENCE).is_some());
    // Still serving, old and new clients alike.
    append(&path, b"y");
    assert_eq!(read_exact(&mut c, 1), b"y");
    let mut c2 = srv.request("0");
    assert_eq!(read_exact(&mut c2, 2), b"xy");
    assert!(srv.wait_exit(Duration::from_millis(200)).is_none());
}

#[test]
fn bind_takes_a_host_name() {
    let dir = tempdir();
    let path = dir.path().join("log");
    append(&path, b"by name");
    let srv = tailsrv(&path).bind("localhost").start();
    assert!(srv.addr().ip().is_loopback(), "{}", srv.addr());
    let mut c = srv.request("0");
    assert_eq!(read_exact(&mut c, 7), b"by name");
}

#[test]
fn ipv6_loopback() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here; skipping");
        return;
    }
    let dir = tempdir();
    let path = dir.path().join("log");
    append(&path, b"v6");
    let srv = tailsrv(&path).bind("::1").start();
    assert!(srv.addr().is_ipv6());
    let mut c = srv.request("0");
    assert_eq!(read_exact(&mut c, 2), b"v6");
}

#[test]
fn help_version_and_bad_flags() {
    let (status, out, _) = Spawn::bin("tailsrv").arg("--help").run();
    let help = String::from_utf8(out).unwrap();
    assert!(status.success());
    for flag in [
        "--port",
        "--bind",
        "--linger-after-file-is-gone",
        "--header-timeout",
        "--max-clients",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    let (_, out, _) = Spawn::bin("tailsrv").arg("--version").run();
    assert!(String::from_utf8(out).unwrap().starts_with("tailsrv "));
    // A parent directory that does not exist is a clear error, not a hang.
    let (status, out, text) = tailsrv("/nonexistent-dir/x/log").run();
    assert!(!status.success());
    assert!(out.is_empty(), "logs go to stderr");
    assert!(text.contains("/nonexistent-dir/x"), "{text}");
}
