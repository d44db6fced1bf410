//! What a new user hits (issue #24), end to end against the real binaries: a start at the
//! end with `--exit-at-end` exits on a quiet file, a header ended by FIN without a newline is
//! answered, a directory request whose start does not parse is refused (never read as a file
//! name), and servers bind loopback unless `--bind` says otherwise.

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use tests::*;

/// Runs tscat with `args` until it exits, at most `limit`: its status (None: still running
/// at the limit, then killed) and stdout.
fn tscat_within(args: &[String], limit: Duration) -> (Option<i32>, Vec<u8>) {
    let mut cat = tscat(args).spawn();
    match cat.wait_exit(limit) {
        Some(_) => {
            let (status, out, _) = cat.finish();
            (status.code(), out)
        }
        None => {
            cat.kill();
            (None, cat.output())
        }
    }
}

#[test]
fn a_start_at_the_end_with_exit_at_end_exits_on_a_quiet_file() {
    let dir = tempdir();
    let path = dir.path().join("log");
    append(&path, b"one\ntwo\n");
    let srv = tailsrv(&path).start();
    for start in [&["--from-end"][..], &["--last", "0"]] {
        let mut args: Vec<String> = start.iter().map(|s| s.to_string()).collect();
        args.extend(["--exit-at-end".into(), srv.addr().to_string()]);
        let (status, out) = tscat_within(&args, Duration::from_secs(10));
        assert_eq!(status, Some(0), "tscat {args:?} did not exit 0 within 10 s");
        assert!(out.is_empty(), "{out:?}");
    }
    // And a start before the end still prints up to it.
    let args = vec![
        "--last".to_string(),
        "4".into(),
        "--exit-at-end".into(),
        srv.addr().to_string(),
    ];
    let (status, out) = tscat_within(&args, Duration::from_secs(10));
    assert_eq!((status, out), (Some(0), b"two\n".to_vec()));
}

#[test]
fn a_header_ended_by_fin_without_a_newline_is_answered() {
    let dir = tempdir();
    let path = dir.path().join("log");
    append(&path, b"hello\n");
    let srv = tailsrv(&path).start();
    for header in [&b"0"[..], b"-3 ok", b"0 ok\r"] {
        let mut s = srv.connect();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(header).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let want: &[u8] = match header {
            b"0" => b"hello\n",
            b"-3 ok" => b"ok 3 6\nlo\n",
            _ => b"ok 0 6\nhello\n",
        };
        assert_eq!(
            String::from_utf8_lossy(&read_exact(&mut s, want.len())),
            String::from_utf8_lossy(want),
            "header {header:?}"
        );
    }
    // A malformed one is refused, not dropped without a word.
    let mut s = srv.connect();
    s.write_all(b"abc").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let answer = read_text(&mut s);
    assert!(answer.starts_with("error: bad-request: "), "{answer:?}");
}

#[test]
fn a_directory_request_whose_start_does_not_parse_is_refused() {
    let dir = tempdir();
    append(&dir.path().join("app.log"), b"x\n");
    let srv = tailsrv(dir.path()).start();
    for line in [
        &b"stream app.log ok\n"[..],
        b"stream app.log from 0\n",
        b"stream app.log from byte\n",
    ] {
        let mut s = srv.connect();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(line).unwrap();
        let answer = read_text(&mut s);
        assert!(
            answer.starts_with("error: bad-request: "),
            "{line:?} -> {answer:?}"
        );
    }
    // The well-formed request still streams.
    let mut s = srv.request("stream app.log from byte 0 ok");
    assert_eq!(read_exact(&mut s, 9), b"ok 0 2\nx\n");
}

#[test]
fn servers_bind_loopback_unless_told() {
    let dir = tempdir();
    let path = dir.path().join("log");
    append(&path, b"x");
    let srv = tailsrv(&path).default_bind().start();
    assert!(srv.addr().ip().is_loopback(), "{}", srv.addr());
    let idx = indexer(&path)
        .default_bind()
        .arg("--index")
        .arg(dir.path().join("idx"))
        .start();
    assert!(idx.addr().ip().is_loopback(), "{}", idx.addr());
    let col = collator(dir.path().join("c.log")).default_bind().start();
    assert!(col.addr().ip().is_loopback(), "{}", col.addr());
    let _ = TcpStream::connect(srv.addr()).unwrap();
}

#[test]
fn serve_up_to_synced_warns_when_nothing_is_published() {
    let dir = tempdir();
    let path = dir.path().join("log");
    // What a collator in `--sync write` mode leaves: data, and no FILE.synced.
    append(&path, b"written, never synced\n");
    let srv = tailsrv(&path).arg("--serve-up-to-synced").start();
    let line = srv.log.wait_for(
        "no synced length has been published",
        Duration::from_secs(15),
    );
    assert!(line.is_some(), "no warning; log:\n{}", srv.log.text());
    // Once a synced length is published the follower is served (and no warning repeats).
    let mut s = srv.request("0 ok");
    let sidecar = dir.path().join("log.synced");
    // One record: the synced length as an 8-byte big-endian u64 (proto::watermark).
    append(&sidecar, &8u64.to_be_bytes());
    let mut answer = Vec::new();
    while answer.last() != Some(&b'\n') {
        answer.extend(read_exact(&mut s, 1));
    }
    // LEN is the servable length when the start was resolved: 0 or 8.
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("ok 0 "), "{answer:?}");
    assert_eq!(read_exact(&mut s, 8), b"written,");
}

#[test]
fn tail_n_starts_at_the_last_n_lines() {
    let dir = tempdir();
    let path = dir.path().join("log");
    // More lines than one 64 KiB read back, so the scan crosses chunks.
    let lines: Vec<String> = (0..20_000).map(|i| format!("line {i}\n")).collect();
    let all = lines.concat();
    append(&path, all.as_bytes());
    let srv = tailsrv(&path).start();
    for n in [0usize, 1, 3, 12_345, 20_000, 30_000] {
        let want = lines[lines.len().saturating_sub(n)..].concat();
        let start = all.len() - want.len();
        // The raw header, confirmed.
        let mut s = srv.request(format!("last {n} lines ok"));
        let ok = format!("ok {start} {}\n", all.len());
        let got = read_exact(&mut s, ok.len() + want.len());
        assert!(
            got == [ok.as_bytes(), want.as_bytes()].concat(),
            "last {n} lines"
        );
        // tscat -n N (with --framing newline too: a line start is a boundary).
        for framing in [&[][..], &["--framing", "newline"]] {
            let mut args: Vec<String> = vec!["-n".into(), n.to_string(), "--exit-at-end".into()];
            args.extend(framing.iter().map(|s| s.to_string()));
            args.push(srv.addr().to_string());
            let (status, out) = tscat_within(&args, Duration::from_secs(20));
            assert_eq!(status, Some(0), "tscat {args:?}");
            assert!(
                out == want.as_bytes(),
                "tscat {args:?}: {} bytes",
                out.len()
            );
        }
    }
    // An unfinished last line counts as one.
    append(&path, b"partial");
    let mut s = srv.request("last 2 lines ok");
    let want = b"line 19999\npartial";
    let ok = format!("ok {} {}\n", all.len() - 11, all.len() + 7);
    assert_eq!(
        read_exact(&mut s, ok.len() + want.len()),
        [ok.as_bytes(), &want[..]].concat()
    );
    // In directory mode: `stream PATH last N lines`.
    let srv = tailsrv(dir.path()).start();
    let mut s = srv.request("stream log last 1 lines ok");
    let ok = format!("ok {} {}\n", all.len(), all.len() + 7);
    assert_eq!(
        read_exact(&mut s, ok.len() + 7),
        [ok.as_bytes(), b"partial"].concat()
    );
}

#[test]
fn list_sizes_gives_each_path_its_length_and_list_is_unchanged() {
    let dir = tempdir();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    append(&dir.path().join("a.log"), b"12345");
    append(&dir.path().join("sub/with space.log"), b"");
    append(&dir.path().join("z.log"), &[7u8; 70_000]);
    let srv = tailsrv(dir.path()).start();
    let ask = |line: &[u8]| {
        let mut s = srv.connect();
        s.write_all(line).unwrap();
        read_text(&mut s)
    };
    assert_eq!(ask(b"list\n"), "a.log\nsub/with space.log\nz.log\n");
    assert_eq!(
        ask(b"list sizes\n"),
        "5 a.log\n0 sub/with space.log\n70000 z.log\n"
    );
}

#[test]
fn tsmirror_path_mirrors_a_file_of_a_directory_server() {
    let dir = tempdir();
    let served = dir.path().join("served");
    std::fs::create_dir_all(served.join("sub")).unwrap();
    let src = served.join("sub/app.log");
    let first = random_bytes(100_000, 24);
    append(&src, &first);
    let srv = tailsrv(&served).start();
    let replica = dir.path().join("replica.log");
    let mut mirror = tsmirror([
        "--path".to_string(),
        "sub/app.log".into(),
        srv.addr().to_string(),
        replica.display().to_string(),
    ])
    .spawn();
    let same = |want: &[u8]| {
        eventually(Duration::from_secs(10), || {
            std::fs::read(&replica).is_ok_and(|got| got == want)
        })
    };
    assert!(same(&first), "replica differs; log:\n{}", mirror.log.text());
    let more = random_bytes(5_000, 25);
    append(&src, &more);
    assert!(same(&[first, more].concat()), "growth not mirrored");
    mirror.signal(rustix::process::Signal::TERM);
    assert!(mirror.wait_exit(Duration::from_secs(10)).is_some());
}

/// Every long flag of `bin --help` (and of `bin SUB --help` for each subcommand): the option
/// lines only (`  -p, --port <PORT>`, `      --bind <ADDR>`), not flags named in prose.
fn help_flags(bin_name: &str, sub: &[&str]) -> Vec<(String, Option<String>)> {
    let mut flags = Vec::new();
    let mut runs: Vec<Vec<&str>> = vec![vec![]];
    runs.extend(sub.iter().map(|s| vec![*s]));
    for run in runs {
        let (status, out, _) = Spawn::bin(bin_name).args(&run).arg("--help").run();
        assert!(status.success(), "{bin_name} {run:?} --help");
        for line in String::from_utf8(out).unwrap().lines() {
            let t = line.trim_start();
            let (t, short) = if t.len() > 4 && t.starts_with('-') && t.as_bytes()[2] == b',' {
                (t[4..].trim_start(), Some(t[..2].to_string()))
            } else {
                (t, None)
            };
            if let Some(rest) = t.strip_prefix("--") {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                if !["help", "version"].contains(&name.as_str()) {
                    flags.push((format!("--{name}"), short));
                }
            }
        }
    }
    flags.sort();
    flags.dedup();
    flags
}

#[test]
fn every_help_flag_is_in_the_docs_synopsis() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut missing = Vec::new();
    for (bin_name, page, sub) in [
        ("tailsrv", "docs/tailsrv.md", &[][..]),
        ("tailsrv-indexer", "docs/indexer.md", &[]),
        ("tailsrv-collator", "docs/collator.md", &[]),
        ("tscat", "docs/consumers.md", &[]),
        ("tsmirror", "docs/consumers.md", &[]),
        ("tswrite", "docs/collator.md", &[]),
        (
            "tsbridge",
            "docs/bridge.md",
            &["to-jetstream", "from-jetstream"],
        ),
    ] {
        let text = std::fs::read_to_string(root.join(page)).unwrap();
        // The synopses: the fenced blocks whose first line starts with the binary's name.
        let mut synopsis = String::new();
        for block in text.split("```").skip(1).step_by(2) {
            let body = block.split_once('\n').map_or("", |b| b.1);
            if body.trim_start().starts_with(&format!("{bin_name} ")) {
                synopsis.push_str(body);
            }
        }
        for (flag, short) in help_flags(bin_name, sub) {
            let named = |f: &str| {
                synopsis.match_indices(f).any(|(i, _)| {
                    let next = synopsis[i + f.len()..].chars().next();
                    !next.is_some_and(|c| c == '-' || c.is_ascii_alphanumeric())
                        && (i == 0
                            || !synopsis[..i]
                                .ends_with(|c: char| c.is_ascii_alphanumeric() || c == '-'))
                })
            };
            // `-p PORT` names --port, `-v|-q` --verbose and --quiet.
            if !named(&flag) && !short.is_some_and(|s| named(&s)) {
                missing.push(format!("{bin_name}: {flag} (in {page})"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "flags of --help missing from the docs synopsis:\n{}",
        missing.join("\n")
    );
}
