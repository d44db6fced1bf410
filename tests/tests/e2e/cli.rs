//! The command lines end to end: what each binary says about itself (`--version`,
//! `--help`), what it refuses before doing anything (exit 2, nothing bound, nothing
//! created), and tailsrv's default PATH. Real binaries, real sockets on 127.0.0.1.

use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use tests::*;

const BINARIES: [&str; 4] = ["tailsrv", "tailsrv-indexer", "tscat", "tsmirror"];

/// Runs `name args` to completion (bounded by [`PATIENCE`]): status, stdout, stderr.
fn run(name: &str, args: &[&str]) -> (ExitStatus, String, String) {
    let (status, out, err) = Spawn::bin(name).args(args).run();
    (status, String::from_utf8_lossy(&out).into_owned(), err)
}

#[test]
fn every_binary_names_itself() {
    let version = env!("CARGO_PKG_VERSION");
    for name in BINARIES {
        let (status, out, err) = run(name, &["--version"]);
        assert!(status.success(), "{name} --version: {status:?} {err}");
        assert_eq!(out, format!("{name} {version}\n"), "{name} --version");
        for help in ["-h", "--help"] {
            let (status, text, err) = run(name, &[help]);
            assert!(status.success(), "{name} {help}: {status:?} {err}");
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
        let started = Instant::now();
        let (status, out, err) = Spawn::server(name).args(&extra).run();
        assert_eq!(status.code(), Some(2), "{name} {extra:?}: {err}");
        assert!(err.contains(needle), "{name} {extra:?}: {err}");
        assert!(
            !err.contains("listening on"),
            "{name} {extra:?} listened before refusing: {err}"
        );
        assert!(out.is_empty());
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
    let srv = in_dir(dir.path()).start();
    assert_eq!(read_to_end(&mut srv.request("list")), b"a.log\nsub/b.log\n");
    let mut s = srv.request("stream sub/b.log from byte 0 ok");
    assert_eq!(read_exact(&mut s, 12), b"ok 0 5\nbeta\n");
}

/// tailsrv in `dir` (its working directory) without a PATH, logging as text.
fn in_dir(dir: &Path) -> Spawn {
    Spawn::server("tailsrv")
        .args(["--log-format", "text"])
        .current_dir(dir)
}

#[test]
fn tailsrv_logs_what_it_serves() {
    let dir = tempdir();
    append(&dir.path().join("a.log"), b"alpha\n");
    // Without PATH: the current directory, said so, and named.
    let out = in_dir(dir.path()).start().log.text();
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
    let out = in_dir(dir.path()).target("a.log").start().log.text();
    assert!(
        out.contains("serving a file") && out.contains("a.log"),
        "{out}"
    );
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
    let srv = tailsrv(&source).start();
    let replica = dir.path().join("replica");
    let typescript = dir.path().join("typescript");
    let cmd = format!(
        "'{}' {} '{}'",
        bin("tsmirror").display(),
        srv.addr(),
        replica.display()
    );
    let script = Spawn::tool("script")
        .args(["-qfec", &cmd, typescript.to_str().unwrap()])
        .spawn();
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let done = eventually(Duration::from_secs(60), || len(&replica) > 200 << 20);
    let shown = eventually(PATIENCE, || {
        std::fs::read_to_string(&typescript).is_ok_and(|t| t.contains("caught up"))
    });
    drop(script);
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
