//! Consumers decide what to do with a refusal by its code, never by its prose.
//!
//! A scripted server in this test answers tscat's request with refusal lines whose codes and
//! reasons the test picks: transient codes carrying the prose of permanent ones (and the other
//! way round), and a code from a future version. The servers' real prose can then be reworded
//! freely: behaviour follows `proto::Code::is_transient` alone.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tests::{tscat, Proc, LOOPBACK};

/// What the scripted server does with one connection.
#[derive(Clone)]
enum Answer {
    /// Sends this line (a refusal) and closes.
    Refuse(&'static str),
    /// Confirms the request (`ok 0 0`), sends these bytes and keeps the connection open.
    Serve(&'static [u8]),
}

/// A server that answers the i-th connection with `script[i]` (the last entry repeats), and
/// records every request line it was sent.
struct Scripted {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    accepted: Arc<AtomicUsize>,
}

impl Scripted {
    fn start(script: Vec<Answer>) -> Scripted {
        let listener = TcpListener::bind((LOOPBACK, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (reqs, count) = (requests.clone(), accepted.clone());
        // Detached: it ends with the test process; it only ever blocks in accept/read.
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let i = count.fetch_add(1, Ordering::SeqCst);
                let mut line = String::new();
                let _ = BufReader::new(&stream).read_line(&mut line);
                reqs.lock().unwrap().push(line.trim_end().to_owned());
                match &script[i.min(script.len() - 1)] {
                    Answer::Refuse(refusal) => {
                        let _ = stream.write_all(refusal.as_bytes());
                    }
                    Answer::Serve(data) => {
                        let _ = stream.write_all(b"ok 0 0\n");
                        let _ = stream.write_all(data);
                        held.push(stream);
                    }
                }
            }
        });
        Scripted {
            addr,
            requests,
            accepted,
        }
    }
}

/// tscat on `addr`.
fn tscat_on(addr: SocketAddr) -> Proc {
    tscat([addr.to_string()]).spawn()
}

#[test]
fn transient_codes_are_retried_whatever_their_prose() {
    // Each refusal carries a transient code and the words of a permanent one.
    let server = Scripted::start(vec![
        Answer::Refuse("error: busy: path is excluded by an .ignore file\n"),
        Answer::Refuse("error: watch-limit: not an integer byte offset\n"),
        Answer::Refuse("error: loading: wrong mode entirely\n"),
        Answer::Serve(b"error: not-served: this line is data\nhello\n"),
    ]);
    let tscat = tscat_on(server.addr);
    let want = b"error: not-served: this line is data\nhello\n";
    tscat.wait_until("the data", |o| o == want);
    assert_eq!(server.accepted.load(Ordering::SeqCst), 4);
    // Every attempt asked for the same start, with a confirmation.
    assert!(server.requests.lock().unwrap().iter().all(|r| r == "0 ok"));
}

#[test]
fn permanent_codes_end_the_run_whatever_their_prose() {
    for refusal in [
        // The words of a busy server, the code of a path that is not served.
        "error: not-served: too many clients\n",
        "error: bad-request: no complete request line within 1s (inotify watch limit)\n",
        // A code this version does not know: not known to be transient, so not retried.
        "error: from-the-future: too many clients\n",
    ] {
        let server = Scripted::start(vec![Answer::Refuse(refusal)]);
        let (status, _, err) = tscat_on(server.addr).finish();
        let code = status.code();
        assert_eq!(code, Some(7), "{refusal:?}: {err}");
        assert_eq!(
            server.accepted.load(Ordering::SeqCst),
            1,
            "{refusal:?} was retried: {err}"
        );
        let reason = refusal.trim_start_matches("error: ").trim_end();
        assert!(err.contains(reason), "{refusal:?}: {err}");
    }
}

#[test]
fn a_stream_without_a_confirmation_is_not_trusted() {
    // A server that sends data without `ok N` (an old tailsrv, or something else on the
    // port): nothing it sends reaches the output.
    let listener = TcpListener::bind((LOOPBACK, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut s in listener.incoming().flatten() {
            let _ = s.write_all(b"raw bytes with no confirmation\n");
            held.push(s);
        }
    });
    let tscat = tscat_on(addr);
    std::thread::sleep(Duration::from_millis(500));
    assert!(tscat.output().is_empty());
}
