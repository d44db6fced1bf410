//! tailsrv-indexer in directory mode, end to end: the real binary, real TCP on 127.0.0.1,
//! a served directory and an index directory in a temp directory.
//!
//! Ground truth never comes from the indexer's code: messages are encoded here by this
//! file's own encoders, expected offsets come from a naive byte-by-byte scan of what is in
//! each file, and which paths may be indexed is stated by the test from the fixture it built
//! (tailsrv's directory test checks the rule itself against `git check-ignore`).

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use rustix::process::Signal;
use tests::framed::{encode, naive_starts, FRAMINGS};
use tests::*;

fn stream(framing: &str, count: usize, seed: u64) -> Vec<u8> {
    let sizes = random_bytes(count, seed);
    let mut out = Vec::new();
    for (i, &s) in sizes.iter().enumerate() {
        let len = match s {
            0..=9 => 0,
            10..=249 => s as usize,
            250..=253 => 1_000 + 37 * s as usize,
            _ => 70_000,
        };
        encode(
            framing,
            &random_bytes(len, seed * 1000 + i as u64),
            &mut out,
        );
    }
    out
}

type Client = LineClient;

/// The served directory and the index directory of one test.
struct Dirs {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    index: PathBuf,
}

impl Dirs {
    fn new() -> Dirs {
        let tmp = tempdir();
        let root = tmp.path().join("served");
        fs::create_dir(&root).unwrap();
        Dirs {
            root,
            index: tmp.path().join("indexes"),
            _tmp: tmp,
        }
    }

    fn write(&self, rel: &str, data: &[u8]) {
        let p = self.root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }

    /// The indexer of `root`, its indexes in `index`.
    fn indexer(&self) -> Spawn {
        indexer(&self.root).arg("--index-dir").arg(&self.index)
    }

    fn start(&self, framing: &str, extra: &[&str]) -> Proc {
        self.indexer()
            .args(["--framing", framing])
            .args(extra)
            .start()
    }
}

/// Every file under `dir`, relative, sorted.
fn files_under(dir: &Path) -> BTreeSet<String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() && !p.is_symlink() {
                walk(base, &p, out);
            } else {
                out.insert(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

/// Checks every answer about `rel` against a naive scan of the file, in one pipelined batch:
/// `offset-of` every message and one past, `message-at` the first and last byte of every
/// message, and the errors just past the end.
fn check_file(c: &mut Client, framing: &str, root: &Path, rel: &str) {
    let data = fs::read(root.join(rel)).unwrap();
    let (starts, end) = naive_starts(framing, &data);
    let n = starts.len();
    c.wait_count(&format!("count {rel}"), n as u64);
    let mut qs: Vec<String> = (0..=n).map(|i| format!("offset-of {rel} {i}")).collect();
    let mut want: Vec<String> = starts.iter().map(u64::to_string).collect();
    want.push(end.to_string());
    for (i, &s) in starts.iter().enumerate() {
        let next = starts.get(i + 1).copied().unwrap_or(end);
        for b in [s, next - 1] {
            qs.push(format!("message-at {rel} {b}"));
            want.push(i.to_string());
        }
    }
    qs.push(format!("offset-of {rel} {}", n + 1));
    qs.push(format!("message-at {rel} {end}"));
    let answers = c.ask_all(&qs);
    for ((q, a), w) in qs.iter().zip(&answers).zip(&want) {
        assert_eq!(a, w, "{framing}: {q}");
    }
    for (q, a) in qs.iter().zip(&answers).skip(want.len()) {
        assert!(a.starts_with("error: "), "{framing}: {q} answered {a:?}");
    }
}

// ---------------------------------------------------------------------------------------------

#[test]
fn every_framing_answers_per_path_as_a_naive_scan_says() {
    let files = [
        "a.log",
        "sub/b.log",
        "with space.log",
        "sub/deeper/c d 7.log",
    ];
    for (k, framing) in FRAMINGS.into_iter().enumerate() {
        let d = Dirs::new();
        for (i, f) in files.iter().enumerate() {
            d.write(f, &stream(framing, 40 + 25 * i, (k * 10 + i) as u64 + 1));
        }
        let before = files_under(&d.root);
        let p = d.start(framing, &["--stride", "4"]);
        let mut c = Client::new(&p);
        for f in files {
            check_file(&mut c, framing, &d.root, f);
        }
        // One file grows, in two pieces (the first cut inside a message): only it changes,
        // and only once the message is complete.
        let grown = "sub/b.log";
        let more = stream(framing, 30, 99 + k as u64);
        let (more_starts, _) = naive_starts(framing, &more);
        let cut = more_starts[10] as usize + 1;
        append(&d.root.join(grown), &more[..cut]);
        let (now, _) = naive_starts(framing, &fs::read(d.root.join(grown)).unwrap());
        c.wait_count(&format!("count {grown}"), now.len() as u64);
        append(&d.root.join(grown), &more[cut..]);
        for f in files {
            check_file(&mut c, framing, &d.root, f);
        }
        // Index files under the index directory, by relative path; nothing written into
        // the served directory.
        let want: BTreeSet<String> = files.iter().map(|f| format!("{f}.idx")).collect();
        assert_eq!(files_under(&d.index), want, "{framing}");
        assert_eq!(files_under(&d.root), before, "{framing}");
    }
}

#[test]
fn paths_follow_tailsrvs_rule_and_errors_keep_the_connection() {
    let d = Dirs::new();
    let outside = d.root.parent().unwrap().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("o.log"), b"outside\n").unwrap();
    d.write(".ignore", b"*.secret\nprivate/\n");
    d.write("ok.log", b"one\ntwo\nthree\n");
    d.write("k.secret", b"secret\n");
    d.write("private/p.log", b"private\n");
    d.write("sub/s.log", b"s\n");
    symlink(outside.join("o.log"), d.root.join("link-out.log")).unwrap();
    symlink(d.root.join("ok.log"), d.root.join("link-in.log")).unwrap();
    symlink(d.root.join("k.secret"), d.root.join("link-secret.log")).unwrap();
    let p = d.start("newline", &[]);
    let mut c = Client::new(&p);

    let long = "a".repeat(4097);
    let refused = [
        ("count k.secret", "excluded by an .ignore file"),
        ("count private/p.log", "excluded by an .ignore file"),
        ("count .ignore", "excluded by an .ignore file"),
        ("count link-secret.log", "excluded by an .ignore file"),
        ("count link-out.log", "outside the served directory"),
        ("offset-of ../outside/o.log 0", "`..`"),
        ("message-at /etc/passwd 0", "absolute"),
        ("count sub", "not a regular file"),
        ("count sub/", "empty or `.` component"),
        ("count nodir/x.log", "no such directory"),
        (&format!("count {long}"), "longer than 4096"),
        // Not there (yet): answered at once, not waited for.
        ("count later.log", "no such file"),
        // The single-file grammar is not directory mode's.
        ("count", "count PATH"),
        ("offset-of 3", "offset-of PATH N"),
        ("offset-of ok.log x", "bad number"),
        ("stream ok.log", "unknown command"),
    ];
    for (q, why) in refused {
        let a = c.ask(q);
        assert!(
            a.starts_with("error: ") && a.contains(why),
            "{q:?} answered {a:?}, expected an error with {why:?}"
        );
    }
    // The same connection still answers, and a refused path named a file: it is quoted.
    assert_eq!(c.ask("count ok.log"), "3");
    assert!(c
        .ask("count k.secret")
        .starts_with("error: not-served: \"k.secret\": "));

    // A file that appears is indexed from the next query on.
    d.write("later.log", b"1\n2\n3\n4\n");
    assert_eq!(c.ask("count later.log"), "4");
    // Two names of one file share one index, keyed by the real path.
    assert_eq!(c.ask("offset-of link-in.log 2"), "8");
    assert_eq!(c.ask("offset-of ok.log 2"), "8");
    let want: BTreeSet<String> = ["ok.log.idx", "later.log.idx"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(files_under(&d.index), want);

    // An over-long request line is answered, then the connection is closed.
    let mut s = p.connect();
    s.write_all(format!("count {}\n", "a".repeat(5000)).as_bytes())
        .unwrap();
    let answer = read_text(&mut s);
    assert!(
        answer.starts_with("error: too-long: request line longer than"),
        "{answer:?}"
    );
}

#[test]
fn a_file_that_goes_away_drops_its_index() {
    let d = Dirs::new();
    d.write("a.log", b"1\n2\n3\n");
    let p = d.start("newline", &[]);
    let idle_fds = p.fd_count();
    let idx = d.index.join("a.log.idx");
    {
        let mut c = Client::new(&p);
        assert_eq!(c.ask("count a.log"), "3");
        assert!(idx.exists());

        // Deleted: the index is dropped with its file, the path is "not there" again.
        fs::remove_file(d.root.join("a.log")).unwrap();
        c.wait_answer("count a.log", |a| a.contains("no such file"));
        assert!(eventually(PATIENCE, || !idx.exists()), "index file kept");

        // A new file under the name gets a new index.
        d.write("a.log", b"1\n2\n3\n4\n5\n");
        assert_eq!(c.ask("count a.log"), "5");
        assert!(idx.exists());

        // Moved: the old name is gone, the new name is indexed afresh.
        fs::rename(d.root.join("a.log"), d.root.join("b.log")).unwrap();
        c.wait_answer("count a.log", |a| a.contains("no such file"));
        assert_eq!(c.ask("count b.log"), "5");
        assert_eq!(c.ask("offset-of b.log 5"), "10");
        fs::remove_file(d.root.join("b.log")).unwrap();
        c.wait_answer("count b.log", |a| a.contains("no such file"));
    }
    // Nothing is held for files that are gone: no descriptor, watch or index file.
    assert!(
        eventually(PATIENCE, || p.fd_count() == idle_fds),
        "{} descriptors open, {idle_fds} when idle",
        p.fd_count()
    );
    assert!(eventually(PATIENCE, || files_under(&d.index).is_empty()));
}

#[test]
fn a_restart_resumes_each_file_from_its_index() {
    let d = Dirs::new();
    for (i, f) in ["x.log", "deep/er/y.log"].iter().enumerate() {
        d.write(f, &stream("varint", 500 + 100 * i, 40 + i as u64));
    }
    let mut p = d.start("varint", &["--stride", "8"]);
    let mut c = Client::new(&p);
    check_file(&mut c, "varint", &d.root, "x.log");
    check_file(&mut c, "varint", &d.root, "deep/er/y.log");
    drop(c);
    p.signal(Signal::TERM);
    assert!(p.wait_exit(PATIENCE).is_some_and(|s| s.success()));

    append(&d.root.join("x.log"), &stream("varint", 20, 77));
    let p = d.start("varint", &["--stride", "8"]);
    let mut c = Client::new(&p);
    check_file(&mut c, "varint", &d.root, "x.log");
    check_file(&mut c, "varint", &d.root, "deep/er/y.log");
    let log = p.log.text();
    assert_eq!(
        log.matches("resuming from the index at byte").count(),
        2,
        "{log}"
    );
    assert!(!log.contains("building it from the start"), "{log}");
}

#[test]
fn many_files_each_answered_from_its_own_index() {
    let d = Dirs::new();
    let n = 300;
    let mut truth = Vec::new();
    for i in 0..n {
        let rel = format!("d{}/f {i}.log", i % 7);
        let data: Vec<u8> = (0..=i % 23)
            .flat_map(|j| format!("{i}-{j}{}\n", "z".repeat((i * j) % 50)).into_bytes())
            .collect();
        d.write(&rel, &data);
        truth.push((rel, naive_starts("newline", &data)));
    }
    let p = d.start("newline", &["--stride", "3"]);
    let mut c = Client::new(&p);
    // Interleaved paths in one pipelined batch.
    let mut qs = Vec::new();
    let mut want = Vec::new();
    for (rel, (starts, end)) in &truth {
        qs.push(format!("count {rel}"));
        want.push(starts.len().to_string());
        qs.push(format!("offset-of {rel} {}", starts.len() - 1));
        want.push(starts.last().unwrap().to_string());
        qs.push(format!("message-at {rel} {}", end - 1));
        want.push((starts.len() - 1).to_string());
    }
    let answers = c.ask_all(&qs);
    for ((q, a), w) in qs.iter().zip(&answers).zip(&want) {
        assert_eq!(a, w, "{q}");
    }
    assert_eq!(files_under(&d.index).len(), n);
}

#[test]
fn the_index_directory_must_not_overlap_the_served_one() {
    let d = Dirs::new();
    d.write("a.log", b"x\n");
    // Runs the indexer to its exit; its log must come to contain `needle`.
    let run = |indexer: Spawn, needle: &str| {
        let mut p = indexer.spawn();
        let status = p.wait_exit(PATIENCE).expect("exits");
        let said = p.log.wait_for(needle, PATIENCE).is_some();
        assert!(said, "no {needle:?} in the log:\n{}", p.log.text());
        status
    };
    let with_index = |index: &Path| indexer(&d.root).arg("--index-dir").arg(index);

    let inside = d.root.join("ix");
    let status = run(with_index(&inside), "is inside the indexed directory");
    assert!(!status.success());
    assert!(
        !inside.exists(),
        "created an index directory inside the served one"
    );

    // Through a symlink is still inside.
    let alias = d.root.parent().unwrap().join("alias");
    symlink(&d.root, &alias).unwrap();
    let status = run(
        with_index(&alias.join("ix")),
        "is inside the indexed directory",
    );
    assert!(!status.success());

    let status = run(
        with_index(d.root.parent().unwrap()),
        "contains the indexed directory",
    );
    assert!(!status.success());

    // A directory without --index-dir, --index-dir with a file: usage errors.
    let status = run(indexer(&d.root).default_bind(), "needs --index-dir");
    assert_eq!(status.code(), Some(2));
    let file = d.root.join("a.log");
    let status = run(
        indexer(&file)
            .default_bind()
            .arg("--index-dir")
            .arg(&d.index),
        "not a directory",
    );
    assert_eq!(status.code(), Some(2));
    assert_eq!(files_under(&d.root).len(), 1);
}

#[test]
fn single_file_mode_keeps_its_grammar() {
    let tmp = tempdir();
    let path = tmp.path().join("log");
    fs::write(&path, b"a\nbb\n").unwrap();
    let p = indexer(&path).start();
    let mut c = Client::new(&p);
    // Single-file mode indexes from the start, without a first query: wait for it.
    c.wait_answer("count", |a| a == "2");
    assert_eq!(c.ask("offset-of 1"), "2");
    assert!(c
        .ask("count log")
        .starts_with("error: bad-request: count takes no argument"));
    assert!(c
        .ask("offset-of log 1")
        .starts_with("error: bad-request: unexpected"));
}
