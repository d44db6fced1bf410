//! tailsrv in directory mode, end to end. What may be served is judged independently of the
//! server: `.ignore` semantics by `git check-ignore` (the files copied as `.gitignore` into a
//! scratch repository), containment by the test's own canonicalization.

use std::collections::BTreeSet;
use std::io::Read;
use std::net::TcpStream;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tests::*;

fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

/// The fixture: files, nested `.ignore`s, symlinks in and out, special files.
/// Every regular file holds `content of <its path relative to root>\n`.
fn fixture(root: &Path, outside: &Path) -> Vec<&'static str> {
    let files = [
        "top.log",
        "app/access.log",
        "app/error.log",
        "app/debug.tmp",
        "app/keep.tmp",
        "app/old/2019.log",
        "app/deep/x/y.log",
        "secret/key.log",
        "notes.txt",
        "notes.txt.bak",
        ".hidden.log",
        "with space.log",
    ];
    for f in files {
        write(&root.join(f), format!("content of {f}\n").as_bytes());
    }
    write(&root.join(".ignore"), b"secret/\n*.tmp\n*.bak\n");
    // Nested: re-include one .tmp file, exclude a subdirectory and a name.
    write(&root.join("app/.ignore"), b"!keep.tmp\nold/\nerror.log\n");
    write(&root.join("app/deep/.ignore"), b"# nothing but a comment\n");
    write(&outside.join("outside.log"), b"content of outside\n");
    symlink(outside.join("outside.log"), root.join("link-out.log")).unwrap();
    symlink(outside, root.join("dir-out")).unwrap();
    symlink(root.join("app/access.log"), root.join("link-in.log")).unwrap();
    symlink(root.join("secret/key.log"), root.join("link-secret.log")).unwrap();
    symlink(root.join("nowhere"), root.join("dangling.log")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
    files.to_vec()
}

/// Whether git, reading the same rules as `.gitignore`, ignores `rel` under `root`.
fn git_ignores(root: &Path, rel: &str) -> bool {
    let repo = root.parent().unwrap().join("git-oracle");
    if !repo.exists() {
        // Mirror the tree's directories and regular files (git needs to see what is a
        // directory), with every `.ignore` as `.gitignore`.
        for entry in walk(root) {
            let rel_path = entry.strip_prefix(root).unwrap();
            let meta = std::fs::symlink_metadata(&entry).unwrap();
            if !meta.is_file() {
                continue;
            }
            let dest = if entry.file_name().unwrap() == ".ignore" {
                repo.join(rel_path).with_file_name(".gitignore")
            } else {
                repo.join(rel_path)
            };
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(&entry, dest).unwrap();
        }
        std::fs::create_dir_all(&repo).unwrap();
        let ok = Command::new("git")
            .args(["init", "-q"])
            .current_dir(&repo)
            .status()
            .unwrap();
        assert!(ok.success());
    }
    let out = Command::new("git")
        .args(["check-ignore", "-q", "--no-index", "--", rel])
        .current_dir(&repo)
        .status()
        .unwrap();
    out.code() == Some(0) || rel.rsplit('/').next() == Some(".ignore")
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let t = std::fs::symlink_metadata(&p).unwrap().file_type();
        if t.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn list_shows_exactly_the_servable_files() {
    let dir = tempdir();
    let (root, outside) = (dir.path().join("root"), dir.path().join("outside"));
    let files = fixture(&root, &outside);
    let srv = tailsrv(&root).start();
    let listing = read_text(&mut srv.request(b"list"));
    let listed: Vec<&str> = listing.lines().collect();

    // Expected: the fixture's regular files that git would not ignore.
    let expected: BTreeSet<&str> = files
        .iter()
        .copied()
        .filter(|f| !git_ignores(&root, f))
        .collect();
    assert_eq!(
        listed.iter().copied().collect::<BTreeSet<_>>(),
        expected,
        "{listing}"
    );
    // Spot-check the oracle agrees with the fixture's intent.
    assert!(expected.contains("app/keep.tmp") && !expected.contains("app/debug.tmp"));
    assert!(!expected.contains("app/old/2019.log") && !expected.contains("secret/key.log"));
    let mut sorted = listed.clone();
    sorted.sort_by(|a, b| Path::new(a).cmp(Path::new(b)));
    assert_eq!(listed, sorted, "listing is not sorted");

    // Everything listed can be streamed, and holds what the fixture wrote.
    for path in listed {
        let mut s = srv.request(format!("stream {path} from byte 0").as_bytes());
        let want = format!("content of {path}\n");
        assert_eq!(read_exact(&mut s, want.len()), want.as_bytes(), "{path}");
    }
}

#[test]
fn every_stream_form_and_growth() {
    let dir = tempdir();
    let root = dir.path().join("root");
    let path = root.join("nginx/access.log");
    let data = random_bytes(5000, 11);
    write(&path, &data);
    // -v: the server logs each accepted request, which is how the test knows that the
    // from-the-end clients have been placed before it appends.
    let srv = tailsrv(&root).arg("-v").start();
    let mut clients = vec![
        (srv.request(b"stream nginx/access.log from byte 0"), 0),
        (srv.request(b"stream nginx/access.log from byte 1234"), 1234),
        (srv.request(b"stream nginx/access.log from byte -200"), 4800),
        (srv.request(b"stream nginx/access.log from byte -0"), 5000),
        (srv.request(b"stream nginx/access.log"), 5000),
        (
            srv.request(b"stream nginx/access.log from byte 5000\r"),
            5000,
        ),
    ];
    for (s, from) in &mut clients {
        if *from < 5000 {
            assert_eq!(read_exact(s, 5000 - *from), &data[*from..], "from {from}");
        }
    }
    assert!(srv
        .log
        .wait_count("client connected", clients.len(), PATIENCE));
    let more = random_bytes(777, 12);
    append(&path, &more);
    for (s, _) in &mut clients {
        assert_eq!(read_exact(s, more.len()), more);
    }
    // From a byte the file has not reached yet: wait for it.
    let mut ahead = srv.request(b"stream nginx/access.log from byte 6000");
    let more2 = random_bytes(400, 13);
    append(&path, &more2);
    let mut all = data;
    all.extend_from_slice(&more);
    all.extend_from_slice(&more2);
    assert_eq!(read_exact(&mut ahead, all.len() - 6000), &all[6000..]);
}

#[test]
fn every_refusal_is_an_error_line_and_nothing_else() {
    let dir = tempdir();
    let (root, outside) = (dir.path().join("root"), dir.path().join("outside"));
    fixture(&root, &outside);
    let srv = tailsrv(&root).start();
    let long = "a/".repeat(2049) + "x";
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"stream ../outside/outside.log from byte 0".to_vec(),
            "`..`",
        ),
        (b"stream app/../top.log from byte 0".to_vec(), "`..`"),
        (
            format!(
                "stream {} from byte 0",
                outside.join("outside.log").display()
            )
            .into_bytes(),
            "absolute",
        ),
        (
            b"stream link-out.log from byte 0".to_vec(),
            "outside the served directory",
        ),
        (
            b"stream dir-out/outside.log from byte 0".to_vec(),
            "outside the served directory",
        ),
        (
            b"stream link-secret.log from byte 0".to_vec(),
            "excluded by an .ignore",
        ),
        (
            b"stream secret/key.log from byte 0".to_vec(),
            "excluded by an .ignore",
        ),
        (
            b"stream app/old/2019.log from byte 0".to_vec(),
            "excluded by an .ignore",
        ),
        (
            b"stream app/debug.tmp from byte 0".to_vec(),
            "excluded by an .ignore",
        ),
        (
            b"stream .ignore from byte 0".to_vec(),
            "excluded by an .ignore",
        ),
        (
            b"stream app/.ignore from byte 0".to_vec(),
            "excluded by an .ignore",
        ),
        (
            b"stream secret/not-yet.log from byte 0".to_vec(),
            "excluded by an .ignore",
        ),
        (b"stream app from byte 0".to_vec(), "a directory"),
        (b"stream fifo from byte 0".to_vec(), "a FIFO"),
        (b"stream sock from byte 0".to_vec(), "a socket"),
        (
            b"stream dangling.log from byte 0".to_vec(),
            "symlink to nothing",
        ),
        (
            b"stream no/such/dir.log from byte 0".to_vec(),
            "no such directory",
        ),
        (b"stream a\x01b from byte 0".to_vec(), "control character"),
        (b"stream a\x00b from byte 0".to_vec(), "control character"),
        (
            b"stream app//access.log from byte 0".to_vec(),
            "empty or `.` component",
        ),
        (
            b"stream ./top.log from byte 0".to_vec(),
            "empty or `.` component",
        ),
        (b"stream \xff.log from byte 0".to_vec(), "not UTF-8"),
        (
            format!("stream {long} from byte 0").into_bytes(),
            "longer than 4096",
        ),
        (b"0".to_vec(), "serves a directory"),
        (b"stream top.log from byte x".to_vec(), "not an integer"),
        (b"lists".to_vec(), "unknown request"),
    ];
    for (line, expect) in cases {
        let mut s = srv.request(&line);
        let answer = read_text(&mut s);
        let shown = String::from_utf8_lossy(&line[..line.len().min(60)]).into_owned();
        assert!(answer.starts_with("error: "), "{shown:?} -> {answer:?}");
        assert!(answer.contains(expect), "{shown:?} -> {answer:?}");
        assert_eq!(answer.matches('\n').count(), 1, "{shown:?} -> {answer:?}");
        assert!(!answer.contains("content of"), "{shown:?} leaked data");
    }
    // A symlink inside the tree to a servable file inside it is fine.
    let mut s = srv.request(b"stream link-in.log from byte 0");
    assert_eq!(read_exact(&mut s, 26), b"content of app/access.log\n");
}

#[test]
fn random_paths_are_served_only_inside_and_unignored() {
    let dir = tempdir();
    let (root, outside) = (dir.path().join("root"), dir.path().join("outside"));
    fixture(&root, &outside);
    let real_root = std::fs::canonicalize(&root).unwrap();
    let srv = tailsrv(&root).start();
    let parts = [
        "app",
        "secret",
        "old",
        "deep",
        "x",
        "y.log",
        "access.log",
        "error.log",
        "keep.tmp",
        "debug.tmp",
        "top.log",
        "..",
        ".",
        "",
        "link-out.log",
        "link-in.log",
        "dir-out",
        "link-secret.log",
        "outside.log",
        ".ignore",
        "key.log",
        "2019.log",
        "new.log",
    ];
    let mut rng = 0x1234_5678_9abc_def1u64;
    let mut next = |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    let mut paths = BTreeSet::new();
    while paths.len() < 300 {
        let depth = 1 + next(4);
        let p: Vec<&str> = (0..depth).map(|_| parts[next(parts.len())]).collect();
        paths.insert(p.join("/"));
    }
    // Ask for all of them at once, then give the server time to answer every one.
    let mut conns: Vec<(String, TcpStream)> = paths
        .iter()
        .map(|p| {
            (
                p.clone(),
                srv.request(format!("stream {p} from byte 0").as_bytes()),
            )
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut served = 0;
    for (path, s) in &mut conns {
        let path: &str = path;
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(50));
        s.set_read_timeout(Some(left)).unwrap();
        let mut buf = vec![0u8; 256];
        let got = match s.read(&mut buf) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(_) => String::new(), // no answer: the server waits for a file that may appear
        };
        if got.starts_with("error: ") {
            continue;
        }
        served += 1;
        // Served (or waited for) ⇒ the requested path is normal, inside, and not ignored...
        assert!(
            !path
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == ".."),
            "{path}: {got:?}"
        );
        assert!(
            !git_ignores(&root, path),
            "{path} is ignored but got {got:?}"
        );
        if got.is_empty() {
            // ...and a file that does not exist yet would be created inside the root.
            let parent = std::fs::canonicalize(root.join(path).parent().unwrap()).unwrap();
            assert!(parent.starts_with(&real_root), "{path}");
            continue;
        }
        // ...and what was sent is the real file's, inside the root and not ignored.
        let real = std::fs::canonicalize(root.join(path)).unwrap();
        let real_rel = real
            .strip_prefix(&real_root)
            .unwrap_or_else(|_| panic!("{path} -> {real:?} outside"));
        let real_rel = real_rel.to_str().unwrap();
        assert!(
            !git_ignores(&root, real_rel),
            "{path} -> ignored {real_rel}"
        );
        assert_eq!(got, format!("content of {real_rel}\n"), "{path}");
    }
    assert!(served > 5, "the generator should hit some servable paths");
}

#[test]
fn files_created_and_deleted_while_followed() {
    let dir = tempdir();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("logs")).unwrap();
    let mut srv = tailsrv(&root).start();
    let mut waiting = srv.request(b"stream logs/new.log from byte 0");
    let path = root.join("logs/new.log");
    append(&path, b"first\n");
    assert_eq!(read_exact(&mut waiting, 6), b"first\n");
    append(&path, b"second\n");
    assert_eq!(read_exact(&mut waiting, 7), b"second\n");
    // Deleted while followed: everything it held was sent, then the follower is closed.
    std::fs::remove_file(&path).unwrap();
    assert_eq!(read_to_end(&mut waiting), b"");
    // The server goes on; the same path can be created again and followed anew.
    assert!(srv.wait_exit(Duration::ZERO).is_none());
    let mut again = srv.request(b"stream logs/new.log from byte 0");
    append(&path, b"reborn\n");
    assert_eq!(read_exact(&mut again, 7), b"reborn\n");
    // Moved while followed: closed too.
    std::fs::rename(&path, root.join("logs/new.log.1")).unwrap();
    assert_eq!(read_to_end(&mut again), b"");
}

/// Inotify watches the server holds, from /proc/PID/fdinfo of its inotify descriptor.
fn inotify_watches(srv: &Proc) -> usize {
    let fds = std::fs::read_dir(format!("/proc/{}/fd", srv.pid())).unwrap();
    for fd in fds.flatten() {
        let target = std::fs::read_link(fd.path()).unwrap_or_default();
        if target.to_string_lossy().contains("inotify") {
            let info = format!(
                "/proc/{}/fdinfo/{}",
                srv.pid(),
                fd.file_name().to_string_lossy()
            );
            let text = std::fs::read_to_string(info).unwrap_or_default();
            return text
                .lines()
                .filter(|l| l.starts_with("inotify wd:"))
                .count();
        }
    }
    panic!("no inotify descriptor");
}

#[test]
fn one_watch_per_followed_file_shared_and_released() {
    const FILES: usize = 20;
    const PER_FILE: usize = 10;
    let dir = tempdir();
    let root = dir.path().join("root");
    for i in 0..FILES {
        write(
            &root.join(format!("f{i}.log")),
            format!("file {i:02}\n").as_bytes(),
        );
    }
    let srv = tailsrv(&root).start();
    assert_eq!(inotify_watches(&srv), 0);
    let mut followers = Vec::new();
    for i in 0..FILES {
        for _ in 0..PER_FILE {
            let mut s = srv.request(format!("stream f{i}.log from byte 0").as_bytes());
            assert_eq!(read_exact(&mut s, 8), format!("file {i:02}\n").as_bytes());
            followers.push((i, s));
        }
    }
    assert_eq!(
        inotify_watches(&srv),
        FILES,
        "one watch per file, shared by its followers"
    );
    // Every follower of a file sees its growth.
    append(&root.join("f3.log"), b"grown\n");
    for (i, s) in followers.iter_mut().filter(|(i, _)| *i == 3) {
        assert_eq!(read_exact(s, 6), b"grown\n", "follower of f{i}");
    }
    // Half the files lose all their followers (by a reset: a FIN alone is not a hang-up,
    // see halfclose.rs): their watches go.
    let reset = |s: &TcpStream| {
        socket2::SockRef::from(s)
            .set_linger(Some(Duration::ZERO))
            .unwrap()
    };
    followers
        .iter()
        .filter(|(i, _)| i % 2 == 1)
        .for_each(|(_, s)| reset(s));
    followers.retain(|(i, _)| i % 2 == 0);
    assert!(
        eventually(PATIENCE, || inotify_watches(&srv) == FILES / 2),
        "{}",
        inotify_watches(&srv)
    );
    followers.iter().for_each(|(_, s)| reset(s));
    followers.clear();
    assert!(eventually(PATIENCE, || inotify_watches(&srv) == 0));
}

#[test]
fn a_large_listing_is_complete() {
    let dir = tempdir();
    let root = dir.path().join("root");
    let mut expected = BTreeSet::new();
    for d in 0..20 {
        for f in 0..250 {
            let rel = format!("d{d:02}/file-{f:04}.log");
            write(&root.join(&rel), b"x");
            expected.insert(rel);
        }
    }
    let srv = tailsrv(&root).start();
    let listing = read_text(&mut srv.request(b"list"));
    let listed: BTreeSet<String> = listing.lines().map(str::to_owned).collect();
    assert_eq!(listed.len(), 5000);
    assert_eq!(listed, expected);
}

#[test]
fn hard_links_are_refused_when_asked() {
    // A hard link inside the directory to a file outside it is the outside file under an
    // inside name: the path rule cannot see it. --refuse-hardlinks refuses every file with
    // more than one link, in `stream` and in `list`.
    let dir = tempdir();
    let root = dir.path().join("root");
    let outside = dir.path().join("outside");
    write(&root.join("plain.log"), b"plain\n");
    write(&outside.join("secret.log"), b"secret\n");
    std::fs::hard_link(outside.join("secret.log"), root.join("linked.log")).unwrap();

    // Without the flag: served (the documented limit of the path rule).
    let open = tailsrv(&root).start();
    let mut s = open.request(b"stream linked.log from byte 0 ok");
    assert_eq!(read_exact(&mut s, 14), b"ok 0 7\nsecret\n");

    let strict = tailsrv(&root).arg("--refuse-hardlinks").start();
    let mut s = strict.request(b"stream linked.log from byte 0 ok");
    let answer = read_text(&mut s);
    assert!(
        answer.starts_with("error: not-served: \"linked.log\": the file has 2 hard links"),
        "{answer:?}"
    );
    let mut s = strict.request(b"stream plain.log from byte 0 ok");
    assert_eq!(read_exact(&mut s, 13), b"ok 0 6\nplain\n");
    let mut s = strict.request(b"list");
    assert_eq!(read_to_end(&mut s), b"plain.log\n");

    // The indexer applies the same rule.
    let ix = indexer(&root)
        .args(["--refuse-hardlinks", "--index-dir"])
        .arg(dir.path().join("idx"))
        .start();
    let answers = LineClient::new(&ix).ask_all(&strings(&["count linked.log", "count plain.log"]));
    assert!(
        answers[0].starts_with("error: not-served: \"linked.log\""),
        "{answers:?}"
    );
    assert_eq!(answers[1], "1");
}
