//! The command lines end to end: what each binary says about itself (`--version`,
//! `--help`), what it refuses before doing anything (exit 2, nothing bound, nothing
//! created), and tailsrv's default PATH. Real binaries, real sockets on 127.0.0.1.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tests::*;

const BINARIES: [&str; 4] = ["tailsrv", "tailsrv-indexer", "tscat", "tsmirror"];

/// Runs `name args` to completion (bounded by [`PATIENCE`]).
fn run(name: &str, args: &[&str], dir: Option<&Path>) -> Output {
    let mut cmd = Command::new(bin(name));
    cmd.args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let mut child = cmd.spawn().expect("spawn");
    let deadline = Instant::now() + PATIENCE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{name} {args:?} did not exit within {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn every_binary_names_itself() {
    let version = env!("CARGO_PKG_VERSION");
    for name in BINARIES {
        let out = run(name, &["--version"], None);
        assert!(out.status.success(), "{name} --version: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{name} {version}\n"),
            "{name} --version"
        );
        for help in ["-h", "--help"] {
            let out = run(name, &[help], None);
            assert!(out.status.success(), "{name} {help}: {out:?}");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.contains(&format!("Usage: {name}")),
                "{name} {help}:\n{text}"
            );
        }
    }
}

#[test]
fn servers_refuse_what_they_cannot_serve_before_listening() {
    let dir = tempdir();
    let fifo = dir.path().join("fifo");
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .expect("mkfifo");
    let fifo = fifo.to_str().unwrap();
    let log = dir.path().join("log");
    append(&log, b"a\n");
    let not_index = dir.path().join("not.idx");
    std::fs::write(&not_index, b"precious data").unwrap();
    let listen = ["-p", "0", "--bind", "127.0.0.1"];
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        ("tailsrv", vec![fifo], "is a FIFO"),
        ("tailsrv", vec!["/dev/null"], "is a device"),
        ("tailsrv-indexer", vec![fifo], "not a regular file"),
        (
            "tailsrv-indexer",
            vec![
                "--index",
                not_index.to_str().unwrap(),
                log.to_str().unwrap(),
            ],
            "not a tailsrv-indexer index",
        ),
        (
            "tailsrv-indexer",
            vec!["--index", "/nonexistent-dir/x.idx", log.to_str().unwrap()],
            "cannot create files beside it",
        ),
        (
            "tailsrv-indexer",
            vec![
                "--index",
                dir.path().to_str().unwrap(),
                log.to_str().unwrap(),
            ],
            "not a regular file",
        ),
    ];
    for (name, extra, needle) in cases {
        let args: Vec<&str> = listen
            .iter()
            .copied()
            .chain(extra.iter().copied())
            .collect();
        let started = Instant::now();
        let out = run(name, &args, None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name} {extra:?}: {err}");
        assert!(err.contains(needle), "{name} {extra:?}: {err}");
        assert!(
            !err.contains("listening on"),
            "{name} {extra:?} listened before refusing: {err}"
        );
        assert!(out.stdout.is_empty());
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{name} {extra:?}: not at once"
        );
    }
    assert_eq!(std::fs::read(&not_index).unwrap(), b"precious data");
}

#[test]
fn tailsrv_without_path_serves_the_current_directory() {
    let dir = tempdir();
    append(&dir.path().join("a.log"), b"alpha\n");
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    append(&dir.path().join("sub/b.log"), b"beta\n");
    let (mut child, addr) = start_in(dir.path(), &[]);
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"list\n").unwrap();
    assert_eq!(read_to_end(&mut s), b"a.log\nsub/b.log\n");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"stream sub/b.log from byte 0 ok\n").unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut got = vec![0u8; b"ok 0 5\nbeta\n".len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, b"ok 0 5\nbeta\n");
    let _ = child.kill();
    let _ = child.wait();
}

/// Starts tailsrv in `dir` (its working directory) with PATH args `path`; returns the child
/// and its address. The caller kills it.
fn start_in(dir: &Path, path: &[&str]) -> (Child, SocketAddr) {
    let (child, text) = until_listening(dir, path);
    let rest = text.split("listening on ").nth(1).expect("listening line");
    let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
    (child, addr)
}

#[test]
fn tailsrv_logs_what_it_serves() {
    let dir = tempdir();
    append(&dir.path().join("a.log"), b"alpha\n");
    // Without PATH: the current directory, said so, and named.
    let out = run_until_listening(dir.path(), &[]);
    assert!(
        out.contains("no PATH given: serving the current directory"),
        "{out}"
    );
    let real = std::fs::canonicalize(dir.path()).unwrap();
    assert!(
        out.contains("serving the files of a directory") && out.contains(real.to_str().unwrap()),
        "{out}"
    );
    // A file: named.
    let out = run_until_listening(dir.path(), &["a.log"]);
    assert!(
        out.contains("serving a file") && out.contains("a.log"),
        "{out}"
    );
}

/// tailsrv's stderr up to and including its `listening on` line; then it is killed.
fn run_until_listening(dir: &Path, path: &[&str]) -> String {
    let (mut child, text) = until_listening(dir, path);
    let _ = child.kill();
    let _ = child.wait();
    text
}

/// Starts tailsrv in `dir`; returns it and its stderr up to its `listening on` line.
fn until_listening(dir: &Path, path: &[&str]) -> (Child, String) {
    let mut args = vec!["-p", "0", "--bind", "127.0.0.1"];
    args.extend_from_slice(path);
    let mut child = Command::new(bin("tailsrv"))
        .args(["--log-format", "text"])
        .args(&args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tailsrv");
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut text = String::new();
    let deadline = Instant::now() + PATIENCE;
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        text.push_str(&line);
        text.push('\n');
        if line.contains("listening on") {
            return (child, text);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("tailsrv never said `listening on`:\n{text}");
}

#[test]
fn tsmirror_shows_progress_on_a_terminal_when_catching_up() {
    // `script` gives tsmirror a terminal as stderr; skip where it is missing.
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("no `script`: skipped");
        return;
    }
    let dir = tempdir();
    let source = dir.path().join("source");
    // A sparse 200 MiB source: a backlog without the test writing 200 MiB.
    let f = std::fs::File::create(&source).unwrap();
    f.set_len(200 << 20).unwrap();
    drop(f);
    append(&source, b"end\n");
    let srv = Proc::start(
        "tailsrv",
        &["-p", "0", "--bind", "127.0.0.1", source.to_str().unwrap()],
    );
    let replica = dir.path().join("replica");
    let typescript = dir.path().join("typescript");
    let cmd = format!(
        "'{}' {} '{}'",
        bin("tsmirror").display(),
        srv.addr(),
        replica.display()
    );
    let mut child = Command::new("script")
        .args(["-qfec", &cmd, typescript.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("script");
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let done = eventually(Duration::from_secs(60), || len(&replica) > 200 << 20);
    let shown = eventually(PATIENCE, || {
        std::fs::read_to_string(&typescript).is_ok_and(|t| t.contains("caught up"))
    });
    let _ = child.kill();
    let _ = child.wait();
    // The tsmirror under `script` is not our child: find it by its replica path and stop it.
    stop_by_cmdline(replica.to_str().unwrap());
    assert!(done, "the replica did not catch up");
    let text = std::fs::read_to_string(&typescript).unwrap_or_default();
    assert!(shown, "no progress shown:\n{text}");
    assert!(
        text.contains("catching up:") && text.contains("MiB/s"),
        "{text}"
    );
}

/// Sends SIGTERM to the tsmirror process whose command line names `needle` (one we started).
fn stop_by_cmdline(needle: &str) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.starts_with(bin("tsmirror").to_str().unwrap()) && cmdline.contains(needle) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
    }
}
